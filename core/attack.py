"""The engine's optimisation helpers: budget projection and the sign-gradient PGD loop.

Methods call ``pgd`` (or write their own loop); whatever they return, the engine calls
``project`` again, so the budget is enforced here and never trusted to a method.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from typing import TYPE_CHECKING, Callable, Collection, Iterator, Sequence

import torch

from guardkit.config import Budget

if TYPE_CHECKING:
    from guardkit.types import WeightedLoss
    from guardkit.view import View

#: ``objective(x_adv, step) -> Tensor[B]``: higher is more protection.
Objective = Callable[[torch.Tensor, int], torch.Tensor]

#: Called as ``(step, steps)`` after every optimisation step of any loop run under ``reporting_steps``
#: (progress bars), without threading a callback through every method's signature.
_STEP_REPORTER: ContextVar[Callable[[int, int], None] | None] = ContextVar("guardkit_step_reporter", default=None)


@contextlib.contextmanager
def reporting_steps(reporter: Callable[[int, int], None] | None) -> Iterator[None]:
    """Within this block, optimisation loops report ``(step, steps)`` to ``reporter``."""
    token = _STEP_REPORTER.set(reporter)
    try:
        yield
    finally:
        _STEP_REPORTER.reset(token)


def report_step(step: int, steps: int) -> None:
    """Tell the current reporter (if any) that ``step`` of ``steps`` is done; loops of methods call this."""
    reporter = _STEP_REPORTER.get()
    if reporter is not None:
        reporter(step, steps)


def project(x_adv: torch.Tensor, x: torch.Tensor, budget: Budget, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x_adv`` moved into the budget's ball around ``x``, the mask, and [0, 1].

    ``mask`` ([B|1, 1|3, H, W], values in [0, 1]) scales the perturbation; 0 keeps a pixel untouched.
    """
    delta = x_adv - x
    if budget.norm == "linf":
        delta = delta.clamp(-budget.eps, budget.eps)
    if mask is not None:
        delta = delta * mask
    if budget.norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (budget.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)
    return (x + delta).clamp(0.0, 1.0)


def quantize_ste(x: torch.Tensor, levels: int = 255) -> torch.Tensor:
    """Round to the 8-bit grid in the forward pass, identity in the backward pass (straight-through).

    The saved PNG is 8-bit, so the loop optimises what will be written.
    """
    return x + (torch.round(x * levels) / levels - x).detach()


def combine(losses: "Sequence[WeightedLoss]", view: "View", active: Collection[str] | None = None) -> torch.Tensor:
    """``sum(+-weight * loss(view))`` per image, signed so that higher is more protection: Tensor[B].

    ``active``: names of the terms switched on at this step (None: all), for methods that schedule terms.
    """
    total = torch.zeros(view.batch_size, device=view.clean.device)
    for term in losses:
        if active is not None and term.name not in active:
            continue
        total = total + (term.weight if term.loss.maximize else -term.weight) * term.loss(view)
    return total


def linear_step(step: int, steps: int, start: float, end: float) -> float:
    """Linear decay from ``start`` (step 0) to ``end`` (last step)."""
    return start if steps <= 1 else start + (end - start) * step / (steps - 1)


def cosine_step(step: int, steps: int, start: float, end: float) -> float:
    """Cosine decay from ``start`` (step 0) to ``end`` (last step)."""
    if steps <= 1:
        return start
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / (steps - 1)))


def random_start(x: torch.Tensor, budget: Budget, generator: torch.Generator, mask: torch.Tensor | None) -> torch.Tensor:
    """A uniform random point of the L-inf ball (or a small L2 one), projected."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    scale = budget.eps if budget.norm == "linf" else budget.eps / math.sqrt(x[0].numel())
    return project(x + noise * scale, x, budget, mask)


def pgd(
    x: torch.Tensor,
    objective: Objective,
    budget: Budget,
    *,
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
    step_size: float | None = None,
    final_step_size: float | None = None,
    schedule: str = "cosine",
    quantize: bool = True,
) -> torch.Tensor:
    """Sign-gradient ascent (PGD, Madry et al. 2018, https://arxiv.org/abs/1706.06083).

    Args:
        x: clean images [B,3,H,W] in [0, 1]; never modified.
        objective: ``(x_adv, step) -> Tensor[B]`` to maximise, one value per image, so images of a
            batch are optimised independently (batch-consistent).
        budget: eps (pixel units), steps, norm, random start.
        step_size: first step (default ``budget.step_size`` or eps/4), decayed towards
            ``final_step_size`` (default step_size/10) along ``schedule`` ("cosine" or "linear"), which it
            reaches one step after the last (the rule of FaceLock's released code): every step moves,
            even with a final step size of 0.
        quantize: optimise the 8-bit rounded image (straight-through), as it will be saved.

    Example: ``x_adv = pgd(x, lambda xa, t: loss(xa), Budget(eps=4/255, steps=100), generator=g)``
    """
    decay = {"cosine": cosine_step, "linear": linear_step}[schedule]
    x = x.detach()
    first = step_size or budget.step_size or budget.eps / 4
    last = final_step_size if final_step_size is not None else first / 10
    x_adv = random_start(x, budget, generator, mask) if budget.random_start else x.clone()
    for step in range(budget.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        x_in = quantize_ste(x_adv) if quantize else x_adv
        value = objective(x_in, step)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        alpha = decay(step, budget.steps + 1, first, last)  # ``last`` at step ``steps``: no zero step
        if budget.norm == "linf":
            update = grad.sign()
        else:
            update = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        x_adv = project(x_adv.detach() + alpha * update, x, budget, mask)
        report_step(step + 1, budget.steps)
    return x_adv.detach()
