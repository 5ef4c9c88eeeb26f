"""The trajectory controls ``flux-edit`` offers (``FluxEdit.feature_injection`` / ``velocity_blend``):
``FeatureInjection`` replaces the single-stream blocks' attention values by the inversion's (early
steps); ``VelocityBlend`` mixes the edit velocity with the inversion's under a token mask (middle steps).
Both follow ``guardkit.contracts.Control``.
"""

from __future__ import annotations

import torch
from guardkit.contracts import ControlBase, StepState
from guardkit.errors import ConfigError


class FeatureInjection(ControlBase):
    """For the first ``steps`` sampling steps, the single-stream blocks' attention values V are replaced by
    those recorded at the matching inversion step (``Inversion.matching``), evaluation by evaluation.
    Needs an inversion that recorded them (``feature_steps >= steps``)."""

    def __init__(self, steps: int) -> None:
        if steps < 0:
            raise ConfigError(f"FeatureInjection: steps must be >= 0, got {steps}")
        self.steps = steps

    def before_step(self, state: StepState) -> None:
        if state.index >= self.steps:
            return
        k = state.inversion.matching(state.index)
        if k not in state.inversion.values:
            raise ConfigError(f"FeatureInjection({self.steps}): the inversion recorded attention values for "
                              f"{len(state.inversion.values)} step(s) only; invert with feature_steps >= {self.steps}")
        state.value_injection = state.inversion.values[k]


class VelocityBlend(ControlBase):
    """For sampling steps ``start <= index < stop``: ``v = M * v_edit + (1 - M) * v_inversion``.

    ``mask_tokens`` [1 or B, N, 1] in [0,1] (1: edit here; see ``mask_to_tokens``). ``v_inversion`` is the
    velocity of the matching inversion step and evaluation (``Inversion.velocity``), used with its sign as
    recorded: both are ``dx/dt``, and the sampler's negative ``dt`` walks the inversion's path backwards, so
    an all-zero mask retraces the inversion back to the photo.
    """

    def __init__(self, mask_tokens: torch.Tensor, start: int, stop: int) -> None:
        if mask_tokens.ndim != 3 or mask_tokens.shape[-1] != 1:
            raise ConfigError(f"VelocityBlend: mask_tokens must be [B,N,1], got {tuple(mask_tokens.shape)}")
        self.mask = mask_tokens
        self.start, self.stop = start, stop

    def after_velocity(self, state: StepState, v: torch.Tensor) -> torch.Tensor:
        if not self.start <= state.index < self.stop:
            return v
        v_inv = state.inversion.velocity(state.index, state.evaluation)
        if v_inv.shape != v.shape:
            raise ConfigError(f"VelocityBlend: inversion velocity {tuple(v_inv.shape)} does not match {tuple(v.shape)}")
        m = self.mask.to(device=v.device, dtype=v.dtype)
        return m * v + (1 - m) * v_inv.to(v.dtype)
