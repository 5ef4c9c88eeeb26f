"""The loop shared by methods that attack an image encoder (FaceLock, PhotoGuard, EditShield, ...).

The photo's face-centred square is protected at the photo's resolution and seen by the encoder at
the model resolution; each step builds a ``View`` (latent, decoded image, face embeddings of the
decoded image, targets) and ascends the weighted losses by signed gradients. Terms can be switched
on from a fraction of the steps (FaceLock's schedule), the perturbation can be limited to the faces,
and random purifications can be drawn each step (EOT) so the protection survives them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from guardkit.attack import combine, pgd
from guardkit.config import Budget, RunConfig
from guardkit.eot import parse_eot, random_purification
from guardkit.errors import ConfigError
from guardkit.fast_path import AUTOCAST_MODES, ChannelsLast, StepCompiler, autocast
from guardkit.region import ModelSpace, group_faces
from guardkit.types import Encoder, Face, FaceModel, WeightedLoss
from guardkit.vae import latent_units
from guardkit.view import View


@dataclass(frozen=True)
class LatentAttackConfig:
    """Options of every encoder method (``-O key=value`` on the CLI).

    resolution: the encoder's input side (512 for Stable Diffusion; multiple of 8).
    mask: "none" (the whole face-centred square may change) or "face" (only the faces' boxes).
    eot: purifications drawn each step ("jpeg,resize,blur"; "" for none); eot_draws per step.
    target: grey level of the target image for targeted methods (the VAE attack; PhotoGuard with
    target_latent="image").
    target_latent: what ``target-latent`` pulls the latent to: "image" (the encoding of the grey target
    image) or "zero" (the VAE's zero latent, ``latent_dist.mean = 0``: the released FaceLock code's
    PhotoGuard baseline, the default of ``photoguard``).
    step_fraction: first step as a fraction of eps; schedule: "linear" or "cosine" decay towards
    final_fraction of eps (None: a hundredth of the first step, as the released code), reached one step
    after the last one, so every step moves.

    Speed (``guardkit.fast_path``; the defaults are the plain fp32 loop):
    autocast: "none", "bf16" or "fp16": the per-step forward under ``torch.autocast`` (the perturbation,
    the gradient and the update stay fp32). channels_last: the encoder's, face model's and LPIPS's
    convolutions in NHWC (converts those modules in place; the numbers are the same up to rounding).
    compile: ``torch.compile`` the per-step objective (one graph per set of active terms; falls back to
    eager with a warning where compiling fails). A batch's photos are optimised one at a time, so that a
    photo's result never depends on its batch.
    """

    resolution: int = 512
    mask: str = "none"
    eot: str = ""
    eot_draws: int = 1
    target: float = 0.5
    target_latent: str = "image"
    step_fraction: float = 0.25
    final_fraction: float | None = None
    schedule: str = "linear"
    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.resolution % 8 or self.resolution < 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if self.mask not in ("none", "face"):
            raise ConfigError(f"mask must be 'none' or 'face', got {self.mask!r}")
        if self.target_latent not in ("image", "zero"):
            raise ConfigError(f"target_latent must be 'image' or 'zero', got {self.target_latent!r}")
        if self.schedule not in ("linear", "cosine"):
            raise ConfigError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.autocast not in AUTOCAST_MODES:
            raise ConfigError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {self.autocast!r}")
        try:
            parse_eot(self.eot)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def active_terms(names: Sequence[str], step: int, steps: int, starts: Mapping[str, float] | None = None,
                 after: Collection[str] = ()) -> set[str]:
    """The terms switched on at ``step`` (0-based) of ``steps``: a term with a start fraction f is on from
    ``step >= f * steps``, or from ``step > f * steps`` when it is in ``after`` (FaceLock's released code
    writes its FR term one way and its LPIPS term the other); a term with no start is always on."""
    starts = starts or {}
    return {n for n in names if n not in starts
            or (step > starts[n] * steps if n in after else step >= starts[n] * steps)}


def attack_targets(encoder: Encoder, clean: torch.Tensor, config: LatentAttackConfig,
                   losses: Sequence[WeightedLoss]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(target_image, target_latent)`` for the targeted terms among ``losses`` (None where unused):
    the grey image at ``config.target``, and its encoding or the VAE's zero latent
    (``config.target_latent``)."""
    names = {term.name for term in losses}
    if not names & {"target-latent", "decoder-target"}:
        return None, None
    with torch.no_grad():
        target_image = torch.full_like(clean, config.target)
        if "target-latent" not in names:
            return target_image, None
        if config.target_latent == "zero":  # raw latent 0, in the encoder's scaled units
            scale, shift = latent_units(encoder)
            like = encoder.encode(clean[:1] * 2 - 1)
            return target_image, torch.full_like(like, -shift * scale)
        return target_image, encoder.encode(target_image * 2 - 1)


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
    after: Collection[str] = (),
) -> torch.Tensor:
    """Protect ``images`` [B,3,H,W]; ``starts`` maps a loss name to the fraction of the steps from
    which it is switched on (default: from the start; strictly after it for the names in ``after``, see
    ``active_terms``). Losses whose class sets ``eot = False`` (a cost on the perturbation itself, such as
    ``pixel-l2``) see the protected photo, not its EOT purifications. Faces far apart are protected one square each
    (``group_faces``), every square against the clean photo, so every face is protected.

    Each photo of a batch is protected on its own (``per_photo``): its square, random start and EOT draws
    never depend on which other photos share the batch."""

    def one(image: torch.Tensor, own: Sequence[Face]) -> torch.Tensor:
        out = image
        for group in group_faces(own):
            space, protected = _attack_square(image, group, budget, run=run, config=config, encoder=encoder,
                                              losses=losses, face_model=face_model, starts=starts,
                                              face_source=face_source, after=after)
            out = space.paste(out, protected)
        return out

    return per_photo(images, faces, one)


def per_photo(images: torch.Tensor, faces: Sequence[Face],
              protect: Callable[[torch.Tensor, list[Face]], torch.Tensor]) -> torch.Tensor:
    """``protect(photo [1,3,H,W], its faces with image_index 0)`` for each photo of ``images``, stacked: a
    photo's protection (its face square, the random start and EOT draws of its generator) is the same in
    any batch. Grouping the faces of a whole batch put every photo in squares cut around the other photos'
    faces, and drew its noise at its position in the batch."""
    if images.shape[0] == 1:
        return protect(images, [f.with_index(0) for f in faces])
    return torch.cat([protect(images[i:i + 1].contiguous(), [f.with_index(0) for f in faces if f.image_index == i])
                      for i in range(images.shape[0])])


def _attack_square(images: torch.Tensor, faces: Sequence[Face], budget: Budget, *, run: RunConfig,
                   config: LatentAttackConfig, encoder: Encoder, losses: Sequence[WeightedLoss],
                   face_model: FaceModel | None, starts: Mapping[str, float] | None,
                   face_source: str, after: Collection[str] = ()) -> tuple[ModelSpace, torch.Tensor]:
    """One face-centred square of ``images`` protected at the model resolution: (its space, the region)."""
    space = ModelSpace.around(images.shape[2], images.shape[3], faces, config.resolution)
    region = space.crop(images)
    model_faces = space.faces(faces)
    clean = space.to_model(region)
    generator = torch.Generator(device=images.device).manual_seed(run.seed)
    kinds = parse_eot(config.eot)
    target_image, target_latent = attack_targets(encoder, clean, config, losses)
    with torch.no_grad():
        clean_latent = encoder.encode(clean * 2 - 1)
        reference = None
        if face_model is not None and model_faces:
            reference = face_model.embed(face_model.align(clean, model_faces))
    mask = space.face_mask(faces, images.shape[0]).to(images.device, images.dtype) if config.mask == "face" else None
    term_names = [t.name for t in losses]
    plain_terms = {t.name for t in losses if getattr(t.loss, "eot", True) is False} if kinds else set()

    def active(step: int) -> set[str]:
        return active_terms(term_names, step, budget.steps, starts, after)

    layout = ChannelsLast(encoder, face_model, *[t.loss for t in losses]) if config.channels_last else None

    def forward(x_adv: torch.Tensor, names: frozenset[str]) -> torch.Tensor:
        seen = space.to_model(x_adv)
        if layout is not None:
            layout.convert()  # again each step: a loss may build its module on first use (LPIPS)
            seen = seen.contiguous(memory_format=torch.channels_last)
        total = torch.zeros(images.shape[0], device=images.device)
        draws = max(1, config.eot_draws) if kinds else 1

        def view_of(image: torch.Tensor) -> View:
            return View(clean, image, model_faces, face_model=face_model, reference_embeddings=reference,
                        encoder=encoder, clean_latent=clean_latent, target_latent=target_latent,
                        target_image=target_image, face_source=face_source)

        with autocast(images.device, config.autocast):
            for _ in range(draws):
                total = total + combine(losses, view_of(random_purification(seen, kinds, generator)),
                                        names - plain_terms)
            if names & plain_terms:  # once, on the photo itself, weighted like the summed EOT draws
                total = total + draws * combine(losses, view_of(seen), names & plain_terms)
        return total.float()

    step_forward = StepCompiler(forward) if config.compile else forward

    def objective(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        return step_forward(x_adv, frozenset(active(step)))

    first = budget.step_size or config.step_fraction * budget.eps
    last = first / 100 if config.final_fraction is None else config.final_fraction * budget.eps
    protected = pgd(region, objective, budget, generator=generator, mask=mask, step_size=first,
                    final_step_size=last, schedule=config.schedule)
    return space, protected
