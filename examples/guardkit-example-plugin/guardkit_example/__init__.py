"""guardkit-example: how a third-party package adds parts to guardkit.

Installing this distribution is all it takes: its ``guardkit`` entry point names this module, and
guardkit calls the hooks below when it builds its registry.

- loss ``example-tv``: total variation of the perturbation (a smoothness cost, minimised).
- method ``example-smooth-noise``: PGD that minimises ``example-tv`` from a random start, i.e. smooth
  random noise inside the budget. It needs no face model (a demonstration, not a protection).
- purifier ``example-sharpen`` (``sharpen.py``): a part with a weight file of its own, declared at
  registration so that ``guardkit models`` lists and verifies it, and a number shorthand
  (``example-sharpen5``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from guardkit import hookimpl
from guardkit.attack import combine, pgd

from .sharpen import SHARPEN_KERNEL, Sharpen


class PerturbationTV:
    """Anisotropic total variation of ``adv - clean``, per photo."""

    maximize: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, view) -> torch.Tensor:
        delta = view.adv - view.clean
        dx = (delta[..., :, 1:] - delta[..., :, :-1]).abs().flatten(1).mean(1)
        dy = (delta[..., 1:, :] - delta[..., :-1, :]).abs().flatten(1).mean(1)
        return dx + dy


class SmoothNoise:
    needs: ClassVar[frozenset[str]] = frozenset()
    needs_gradients: ClassVar[bool] = False
    default_losses: ClassVar[dict[str, float]] = {"example-tv": 1.0}
    default_steps: ClassVar[int] = 10

    def __init__(self, run, *, losses, **options: Any) -> None:
        self.run, self.losses = run, list(losses)

    def protect(self, images, faces, budget):
        from guardkit.view import View

        generator = torch.Generator(device=images.device).manual_seed(self.run.seed)

        def objective(x_adv, step):
            return combine(self.losses, View(images, x_adv, faces))

        return pgd(images, objective, budget, generator=generator)


@hookimpl
def guardkit_register_losses(register):
    register("example-tv", PerturbationTV, summary="total variation of the perturbation (example plugin)")


@hookimpl
def guardkit_register_methods(register):
    register("example-smooth-noise", SmoothNoise, summary="smooth random noise in the budget (example plugin)")


@hookimpl
def guardkit_register_purifiers(register):
    register("example-sharpen", Sharpen, summary="3x3 sharpening from a shipped kernel file (example plugin)",
             weights=(SHARPEN_KERNEL,))
