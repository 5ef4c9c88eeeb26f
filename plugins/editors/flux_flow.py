"""The rectified-flow math of ``flux-edit``: token packing, the FLUX.1 schedule, one solver step, and the
record an inversion keeps (``Inversion``). Pure torch, no diffusers; ``FluxEdit`` drives it.

The flow ``dx/dt = v(x, t)`` (``x_t = (1 - t) * x_0 + t * noise``, so ``v = noise - x_0``) is integrated with
RF-Solver's second-order step (Wang et al., "Taming Rectified Flow for Inversion and Editing", arXiv
2411.04746) or with Euler steps (``solve_step``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from guardkit.errors import ConfigError

Solver = Literal["rf-solver", "euler"]
#: tokens per side of one packed latent patch, and pixels per token side (VAE 8 x packing 2)
PACK = 2
PIXELS_PER_TOKEN = 16


@dataclass(frozen=True)
class PromptEmbeds:
    """One prompt's text encodings: T5 tokens ``embeds`` [1,L,D], CLIP pooled ``pooled`` [1,P], ``text_ids`` [L,3]."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor


@dataclass
class Inversion:
    """What ``invert`` keeps on the device for ``sample`` and its controls.

    ``timesteps``: [steps+1], the *sampling* schedule 1 -> 0 (inversion runs it backwards: inversion step
    ``i`` goes ``timesteps[steps-i] -> timesteps[steps-i-1]``). ``latents``: the photo's tokens at t=0
    [B,N,64]; ``noise``: the tokens reached at t=1. ``velocities[i]``: ``v(x, t)`` at the start of
    inversion step ``i``; ``mid_velocities[i]``: RF-Solver's midpoint velocity of that step (empty for
    Euler). ``values[i]``: for recorded inversion steps, one ``{single block index: V [B,L,heads,head_dim]}``
    per transformer evaluation of the step (start, midpoint). Sampling step ``j`` matches inversion step
    ``matching(j) = steps - 1 - j``: they span the same interval in opposite directions. Velocities are
    ``dx/dt`` in both directions, so they need no sign change: the sampler multiplies them by its
    negative ``dt``.
    """

    noise: torch.Tensor
    latents: torch.Tensor
    timesteps: torch.Tensor
    velocities: list[torch.Tensor]
    mid_velocities: list[torch.Tensor]
    values: dict[int, tuple[dict[int, torch.Tensor], ...]]
    height: int
    width: int
    source_prompt: str
    guidance: float
    solver: Solver

    @property
    def steps(self) -> int:
        return len(self.velocities)

    def matching(self, sampling_index: int) -> int:
        """The inversion step spanning the same interval as sampling step ``sampling_index``."""
        return self.steps - 1 - sampling_index

    def velocity(self, sampling_index: int, evaluation: int = 0) -> torch.Tensor:
        """The inversion velocity matching sampling step ``sampling_index`` and ``evaluation`` (0 start, 1 midpoint)."""
        k = self.matching(sampling_index)
        return self.velocities[k] if evaluation == 0 else self.mid_velocities[k]


#: FLUX.1-dev's first injected single-stream block and its number of them (RF-Solver-Edit, Flux-Guard)
FLUX_DEV_FIRST_BLOCK, FLUX_DEV_SINGLE_BLOCKS = 20, 38


def feature_block_start(blocks: int) -> int:
    """The first single-stream block whose values are injected, at the same relative depth as the
    released code's 20 of FLUX.1-dev's 38 (20 for 38 blocks), and never past the last block."""
    return max(0, min(blocks - 1, round(blocks * FLUX_DEV_FIRST_BLOCK / FLUX_DEV_SINGLE_BLOCKS)))


def mask_to_tokens(mask: torch.Tensor) -> torch.Tensor:
    """An image mask [B,1,H,W] in [0,1] -> token mask [B,N,1] (average over each token's 16x16 pixels)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ConfigError(f"mask_to_tokens expects [B,1,H,W], got {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    if h % PIXELS_PER_TOKEN or w % PIXELS_PER_TOKEN:
        raise ConfigError(f"mask_to_tokens: H and W must be multiples of {PIXELS_PER_TOKEN}, got {h}x{w}")
    pooled = torch.nn.functional.avg_pool2d(mask.float(), PIXELS_PER_TOKEN)
    return pooled.flatten(2).transpose(1, 2)


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """VAE latents [B,C,h,w] (h, w even) -> tokens [B,(h/2)*(w/2),4C], as ``FluxPipeline._pack_latents``."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // PACK, PACK, w // PACK, PACK).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // PACK) * (w // PACK), c * PACK * PACK)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Tokens [B,N,4C] -> VAE latents [B,C,latent_height,latent_width]; the inverse of ``pack_latents``."""
    b, n, c4 = tokens.shape
    hh, ww = latent_height // PACK, latent_width // PACK
    if hh * ww != n:
        raise ConfigError(f"unpack_latents: {n} tokens do not fill a {latent_height}x{latent_width} latent")
    z = tokens.view(b, hh, ww, c4 // (PACK * PACK), PACK, PACK).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, c4 // (PACK * PACK), latent_height, latent_width)


def latent_image_ids(latent_height: int, latent_width: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Position ids [N,3] of the packed tokens (as ``FluxPipeline._prepare_latent_image_ids``)."""
    hh, ww = latent_height // PACK, latent_width // PACK
    ids = torch.zeros(hh, ww, 3)
    ids[..., 1] = torch.arange(hh)[:, None]
    ids[..., 2] = torch.arange(ww)[None, :]
    return ids.reshape(hh * ww, 3).to(device=device, dtype=dtype)


def flux_schedule(steps: int, image_seq_len: int, scheduler_config: Any = None) -> torch.Tensor:
    """The sampling schedule [steps+1] from 1 to 0, shifted as ``FluxPipeline`` shifts it.

    ``sigmas = linspace(1, 0, steps+1)``; with dynamic shifting (FLUX.1) ``mu = calculate_shift(image_seq_len)``
    (linear from ``base_shift`` at ``base_image_seq_len`` tokens to ``max_shift`` at ``max_image_seq_len``)
    and ``sigma' = e^mu / (e^mu + 1/sigma - 1)``; otherwise the scheduler's static ``shift``.
    """
    cfg = scheduler_config if scheduler_config is not None else {}
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    inner = sigmas[:-1]
    if get("use_dynamic_shifting", True):
        base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
        base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.15)
        m = (max_shift - base_shift) / (max_len - base_len)
        mu = image_seq_len * m + (base_shift - m * base_len)
        if get("time_shift_type", "exponential") == "linear":
            inner = mu / (mu + (1 / inner - 1))
        else:
            inner = math.exp(mu) / (math.exp(mu) + (1 / inner - 1))
    else:
        shift = get("shift", 1.0)
        inner = shift * inner / (1 + (shift - 1) * inner)
    return torch.cat([inner, sigmas[-1:]]).float()


def solve_step(x: torch.Tensor, t: float, t_next: float, solver: Solver,
               v_at: Callable[[torch.Tensor, float, int], torch.Tensor]) -> torch.Tensor:
    """One step of ``solver`` from ``t`` to ``t_next``; ``v_at(x, t, evaluation)`` gives the velocity.

    RF-Solver: ``v = v(x_t, t); v_mid = v(x_t + dt/2 * v, t + dt/2); dv/dt ~ (v_mid - v) / (dt/2);
    x_{t+dt} = x_t + dt * v + 0.5 * dt**2 * dv/dt``. Euler: ``x_{t+dt} = x_t + dt * v``.
    """
    dt = t_next - t
    v = v_at(x, t, 0)
    if solver == "euler":
        return x + dt * v
    v_mid = v_at(x + 0.5 * dt * v, t + 0.5 * dt, 1)
    dv_dt = (v_mid - v) / (0.5 * dt)
    return x + dt * v + 0.5 * dt ** 2 * dv_dt
