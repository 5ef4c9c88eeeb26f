"""Flux-Guard's adversarial stage as editor controls (``guardkit.contracts.Control``): ``TrajectoryRecorder``
keeps the clean trajectory's last steps, ``LatentGuard`` optimises the latents of the adversarial one with
Adam against ``w_id * L_id + w_perc * L_perc`` (``adaptive_id_weight``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from guardkit.contracts import ControlBase, SamplingEditor, StepState

if TYPE_CHECKING:
    from .flux_guard import FluxGuardConfig

#: ``(decoded images, clean decode at the same step) -> (L_id, L_perc)``, both scalars
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def adaptive_id_weight(l_perc: float, *, low: float = 0.05, high: float = 1.0, sharpness: float = 20.0,
                       knee: float = 0.3) -> float:
    """``w_id = clip(low + (high - low) / (1 + exp(sharpness * (L_perc - knee))), low, high)``: the identity
    term weakens as the perceptual cost passes ``knee`` (paper: 0.05, 1, 20, 0.3)."""
    z = sharpness * (l_perc - knee)
    s = 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))
    return min(max(low + (high - low) * s, low), high)


class TrajectoryRecorder(ControlBase):
    """Keeps, for the sampling steps ``>= first``, the latents after the step and the step's last velocity."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.latents: dict[int, torch.Tensor] = {}
        self.velocity: dict[int, torch.Tensor] = {}
        self._v: torch.Tensor | None = None

    def after_velocity(self, state: StepState, v: torch.Tensor) -> torch.Tensor:
        if state.index >= self.first and state.evaluation == 0:
            self._v = v.detach()
        return v

    def after_step(self, state: StepState, latents: torch.Tensor) -> torch.Tensor:
        if state.index >= self.first:
            self.latents[state.index] = latents.detach().clone()
            self.velocity[state.index] = self._v
        return latents


@dataclass
class GuardStep:
    """One Adam iteration of the latent optimisation (losses before that iteration's update)."""

    step: int
    iteration: int
    l_id: float
    l_perc: float
    w_id: float
    loss: float


class LatentGuard(ControlBase):
    """The adversarial stage as a ``Control``: in ``after_step`` of the last ``adv_steps`` sampling steps, the
    latent tokens [B,N,64] are optimised with Adam (a fresh optimiser per step) to lower
    ``w_id * L_id + w_perc * L_perc`` (``objective`` gives both; see ``flux_guard``'s docstring).
    ``history`` gets one ``GuardStep`` per iteration; ``final`` the losses after the last update of each step."""

    def __init__(self, editor: SamplingEditor, config: FluxGuardConfig, *, objective: Objective,
                 clean: TrajectoryRecorder, height: int, width: int) -> None:
        self.editor, self.cfg, self.objective = editor, config, objective
        self.clean, self.height, self.width = clean, height, width
        self.first = config.steps - config.adv_steps
        self.history: list[GuardStep] = []
        self.final: list[GuardStep] = []
        self._v: torch.Tensor | None = None

    def after_velocity(self, state: StepState, v: torch.Tensor) -> torch.Tensor:
        if state.index >= self.first and state.evaluation == 0:
            self._v = v.detach()
        return v

    def _decode(self, tokens: torch.Tensor, t: float, v: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.decode == "x0" and v is not None and t > 0:
            tokens = tokens - t * v
        return self.editor.decode_tokens(tokens, self.height, self.width)

    def after_step(self, state: StepState, latents: torch.Tensor) -> torch.Tensor:
        j = state.index
        if j < self.first or self.cfg.iterations == 0:
            return latents
        cfg = self.cfg
        with torch.no_grad():
            clean_images = self._decode(self.clean.latents[j], state.t_next, self.clean.velocity[j])
        v = self._v
        x = latents.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        for it in range(cfg.iterations):
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                images = self._decode(x, state.t_next, v)
                l_id, l_perc = self.objective(images, clean_images)
                w_id = adaptive_id_weight(float(l_perc.detach()), low=cfg.w_id_low, high=cfg.w_id_high,
                                          sharpness=cfg.w_id_sharpness, knee=cfg.w_id_knee)
                loss = w_id * l_id + cfg.w_perc * l_perc
                loss.backward()
            self.history.append(GuardStep(j, it, float(l_id.detach()), float(l_perc.detach()), w_id,
                                          float(loss.detach())))
            optimizer.step()
        with torch.no_grad():
            l_id, l_perc = self.objective(self._decode(x, state.t_next, v), clean_images)
            w_id = adaptive_id_weight(float(l_perc), low=cfg.w_id_low, high=cfg.w_id_high,
                                      sharpness=cfg.w_id_sharpness, knee=cfg.w_id_knee)
            self.final.append(GuardStep(j, cfg.iterations, float(l_id), float(l_perc), w_id,
                                        float(w_id * l_id + cfg.w_perc * l_perc)))
        return x.detach()
