"""The loop shared by methods that attack an image encoder (FaceLock, PhotoGuard, EditShield, ...).

The photo's face-centred square is protected at the photo's resolution and seen by the encoder at
the model resolution; each step builds a ``View`` (latent, decoded image, face embeddings of the
decoded image, targets) and ascends the weighted losses by signed gradients. Terms can be switched
on from a fraction of the steps (FaceLock's schedule), the perturbation can be limited to the faces,
and random purifications can be drawn each step (EOT) so the protection survives them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from guardkit.attack import combine, pgd
from guardkit.config import Budget, RunConfig
from guardkit.eot import parse_eot, random_purification
from guardkit.errors import ConfigError
from guardkit.region import ModelSpace, group_faces
from guardkit.speed import AUTOCAST_MODES, ChannelsLast, StepCompiler, autocast
from guardkit.types import Encoder, Face, FaceModel, WeightedLoss
from guardkit.view import View


@dataclass(frozen=True)
class LatentAttackConfig:
    """Options of every encoder method (``-O key=value`` on the CLI).

    resolution: the encoder's input side (512 for Stable Diffusion; multiple of 8).
    mask: "none" (the whole face-centred square may change) or "face" (only the faces' boxes).
    eot: purifications drawn each step ("jpeg,resize,blur"; "" for none); eot_draws per step.
    target: grey level of the target image for targeted methods (PhotoGuard, VAE attack).
    step_fraction: first step as a fraction of eps; schedule: "linear" or "cosine" decay to
    final_fraction of eps.

    Speed (``guardkit.speed``; the defaults are the plain fp32 loop):
    autocast: "none", "bf16" or "fp16": the per-step forward under ``torch.autocast`` (the perturbation,
    the gradient and the update stay fp32). channels_last: the encoder's, face model's and LPIPS's
    convolutions in NHWC (converts those modules in place; the numbers are the same up to rounding).
    compile: ``torch.compile`` the per-step objective (one graph per set of active terms; falls back to
    eager with a warning where compiling fails). Batching: pass many photos in one tensor.
    """

    resolution: int = 512
    mask: str = "none"
    eot: str = ""
    eot_draws: int = 1
    target: float = 0.5
    step_fraction: float = 0.25
    final_fraction: float = 0.0
    schedule: str = "linear"
    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.resolution % 8 or self.resolution < 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if self.mask not in ("none", "face"):
            raise ConfigError(f"mask must be 'none' or 'face', got {self.mask!r}")
        if self.schedule not in ("linear", "cosine"):
            raise ConfigError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.autocast not in AUTOCAST_MODES:
            raise ConfigError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {self.autocast!r}")
        try:
            parse_eot(self.eot)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def run_latent_attack(
    images: torch.Tensor,
    faces: Sequence[Face],
    budget: Budget,
    *,
    run: RunConfig,
    config: LatentAttackConfig,
    encoder: Encoder,
    losses: Sequence[WeightedLoss],
    face_model: FaceModel | None = None,
    starts: Mapping[str, float] | None = None,
    face_source: str = "decoded",
) -> torch.Tensor:
    """Protect ``images`` [B,3,H,W]; ``starts`` maps a loss name to the fraction of the steps from
    which it is switched on (default: from the start). Faces far apart are protected one square each
    (``group_faces``), every square against the clean photo, so every face is protected."""
    out = images
    for group in group_faces(faces):
        space, protected = _attack_square(images, group, budget, run=run, config=config, encoder=encoder,
                                          losses=losses, face_model=face_model, starts=starts,
                                          face_source=face_source)
        out = space.paste(out, protected)
    return out


def _attack_square(images: torch.Tensor, faces: Sequence[Face], budget: Budget, *, run: RunConfig,
                   config: LatentAttackConfig, encoder: Encoder, losses: Sequence[WeightedLoss],
                   face_model: FaceModel | None, starts: Mapping[str, float] | None,
                   face_source: str) -> tuple[ModelSpace, torch.Tensor]:
    """One face-centred square of ``images`` protected at the model resolution: (its space, the region)."""
    space = ModelSpace.around(images.shape[2], images.shape[3], faces, config.resolution)
    region = space.crop(images)
    model_faces = space.faces(faces)
    clean = space.to_model(region)
    generator = torch.Generator(device=images.device).manual_seed(run.seed)
    kinds = parse_eot(config.eot)
    needs_target = any(term.name in ("target-latent", "decoder-target") for term in losses)
    with torch.no_grad():
        clean_latent = encoder.encode(clean * 2 - 1)
        target_image = torch.full_like(clean, config.target) if needs_target else None
        target_latent = encoder.encode(target_image * 2 - 1) if target_image is not None else None
        reference = None
        if face_model is not None and model_faces:
            reference = face_model.embed(face_model.align(clean, model_faces))
    mask = space.face_mask(faces, images.shape[0]).to(images.device, images.dtype) if config.mask == "face" else None
    starts = dict(starts or {})

    def active(step: int) -> set[str]:
        return {t.name for t in losses if step >= starts.get(t.name, 0.0) * budget.steps}

    layout = ChannelsLast(encoder, face_model, *[t.loss for t in losses]) if config.channels_last else None

    def forward(x_adv: torch.Tensor, names: frozenset[str]) -> torch.Tensor:
        seen = space.to_model(x_adv)
        if layout is not None:
            layout.convert()  # again each step: a loss may build its module on first use (LPIPS)
            seen = seen.contiguous(memory_format=torch.channels_last)
        total = torch.zeros(images.shape[0], device=images.device)
        with autocast(images.device, config.autocast):
            for _ in range(max(1, config.eot_draws) if kinds else 1):
                view = View(clean, random_purification(seen, kinds, generator), model_faces, face_model=face_model,
                            reference_embeddings=reference, encoder=encoder, clean_latent=clean_latent,
                            target_latent=target_latent, target_image=target_image, face_source=face_source)
                total = total + combine(losses, view, names)
        return total.float()

    step_forward = StepCompiler(forward) if config.compile else forward

    def objective(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        return step_forward(x_adv, frozenset(active(step)))

    protected = pgd(region, objective, budget, generator=generator, mask=mask,
                    step_size=budget.step_size or config.step_fraction * budget.eps,
                    final_step_size=config.final_fraction * budget.eps, schedule=config.schedule)
    return space, protected
