"""The transfer loop: momentum sign-gradient ascent with smoothed gradients, under a per-pixel bound
and an L2 cap.

What a protection needs to fool face recognition it cannot see (``docs/transfer.md`` has the measured
effect of each): momentum on the normalised gradient (MI-FGSM, Dong et al., CVPR 2018,
https://arxiv.org/abs/1710.06081) steadies the direction across EOT draws; a Gaussian-smoothed
gradient (TI, Dong et al., CVPR 2019, https://arxiv.org/abs/1904.02884; LowKey, Cherepanova et al., ICLR
2021) trades high-frequency detail that only the attacked models read for lower frequencies that every
model reads. Each pixel steps in proportion to its own bound (``guardkit.visibility``), so the
perturbation fills the visibility-aware budget, and the whole perturbation is kept within an L2 cap
(a whole-photo PSNR floor). The loop optimises the 8-bit image that is saved (straight-through).
"""

from __future__ import annotations

import torch

from guardkit.attack import Objective, cosine_step, quantize_ste, report_step
from guardkit.eot import gaussian_blur
from guardkit.visibility import project_l2


def constrain(delta: torch.Tensor, x: torch.Tensor, bound: torch.Tensor, l2: torch.Tensor | None) -> torch.Tensor:
    """``delta`` within the per-pixel ``bound``, with ``x + delta`` in [0, 1], and within the L2 cap."""
    delta = torch.maximum(torch.minimum(delta, bound), -bound)
    delta = (x + delta).clamp(0, 1) - x
    return project_l2(delta, l2) if l2 is not None else delta


def transfer_pgd(
    x: torch.Tensor,
    objective: Objective,
    *,
    bound: torch.Tensor,
    steps: int,
    step_size: float,
    generator: torch.Generator,
    l2: torch.Tensor | None = None,
    momentum: float = 0.9,
    smooth_sigma: float = 0.0,
    random_start: bool = True,
    quantize: bool = True,
) -> torch.Tensor:
    """Maximise ``objective(x_adv, step) -> Tensor[B]`` over ``x_adv = x + delta``.

    Args:
        x: clean images [B,3,H,W] in [0, 1]; never modified.
        bound: per-pixel L-inf bound [B|1, 1|3, H, W] (0 where a pixel must not move); its largest
            value plays the role of eps for the step size.
        steps: iterations; ``step_size``: the first step as a fraction of each pixel's bound, cosine-decayed
            to a tenth of it.
        l2: per-image L2 cap [B] (``guardkit.visibility.l2_cap``), or None.
        momentum: MI-FGSM's decay ``mu`` (0: plain sign-PGD); ``smooth_sigma``: TI's Gaussian, in pixels
            of ``x`` (0: none).

    Example: ``transfer_pgd(x, obj, bound=torch.full_like(x[:, :1], 4/255), steps=50, step_size=0.25, generator=g)``
    """
    x = x.detach()
    bound = bound.to(x.dtype).expand(x.shape[0], -1, -1, -1)
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
        delta = constrain((noise * 2 - 1) * bound * 0.5, x, bound, l2)
    else:
        delta = torch.zeros_like(x)
    velocity = torch.zeros_like(x)
    for step in range(steps):
        x_adv = (x + delta).requires_grad_(True)
        value = objective(quantize_ste(x_adv) if quantize else x_adv, step)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        if smooth_sigma > 0:
            grad = gaussian_blur(grad, smooth_sigma)
        if momentum > 0:
            velocity = momentum * velocity + grad / grad.abs().flatten(1).mean(dim=1).clamp_min(1e-20).view(-1, 1, 1, 1)
            grad = velocity
        alpha = cosine_step(step, steps, step_size, step_size / 10)
        delta = constrain(delta.detach() + alpha * bound * direction(grad, delta, l2), x, bound, l2)
        report_step(step + 1, steps)
    return fit_quantized(x, delta, l2) if quantize and l2 is not None else (x + delta).detach()


def direction(grad: torch.Tensor, delta: torch.Tensor, l2: torch.Tensor | None) -> torch.Tensor:
    """The step's direction per image: the gradient's sign while the image is inside its L2 cap (the L-inf
    box binds: fill it), and the gradient scaled to unit RMS once the cap binds (then the L2 budget is what
    is spent, and an L2 step spends it on the pixels that matter most instead of on every pixel alike)."""
    sign = grad.sign()
    if l2 is None:
        return sign
    flat = grad.flatten(1)
    rms = flat.pow(2).mean(dim=1).sqrt().clamp_min(1e-20)
    scaled = grad / rms.view(-1, *([1] * (grad.dim() - 1)))
    binding = (delta.flatten(1).norm(dim=1) >= 0.98 * l2).view(-1, *([1] * (grad.dim() - 1)))
    return torch.where(binding, scaled, sign)


def fit_quantized(x: torch.Tensor, delta: torch.Tensor, l2: torch.Tensor, shrink: float = 0.98) -> torch.Tensor:
    """``x + delta`` rounded to the 8-bit grid, with ``delta`` shrunk (per image) until the *rounded*
    perturbation also lies within the L2 cap: rounding can add more than the cap left over."""
    delta = delta.detach()
    for _ in range(60):
        out = torch.round((x + delta) * 255) / 255
        over = (out - x).flatten(1).norm(dim=1) > l2
        if not over.any():
            return out
        delta = torch.where(over.view(-1, *([1] * (delta.dim() - 1))), delta * shrink, delta)
    return x.clone()
