"""Enrolment: learn one person's cloak (``guardkit.cloak``) from a few photos of them.

The K variants of the cloak are optimised together over every enrolment photo (and its mirror image) with
expectation over what changes between photos and pipelines: the face's scale in the photo, small shifts and
rotations of the landmarks that place the cloak (another photo's landmark fit), brightness and contrast,
JPEG re-compression, and every face model's own crops, moved as other detectors would move them
(``guardkit.geometry``). Each variant is pushed away from the person under every face model of the
ensemble (each term divided by that model's threshold and saturated, so none dominates) and pulled towards
its own random decoy direction, so photos carrying different variants are pushed apart as well.

The loop is MI-FGSM-style sign ascent under the L-inf ``eps`` and an L2 cap from the PSNR floor (``guardkit
.transfer``); it writes a checkpoint every few steps and resumes from it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from guardkit.attack import cosine_step
from guardkit.cloak import Cloak, feather, footprint, placement_theta, warp
from guardkit.ensemble import Member
from guardkit.eot import gaussian_blur, jpeg_bpda
from guardkit.errors import NoFaceError
from guardkit.geometry import jitter_chips, jitter_faces
from guardkit.transfer import direction
from guardkit.types import Face
from guardkit.visibility import l2_cap, project_l2


@dataclass(frozen=True)
class EnrollSettings:
    """``coverage``: the share of a photo the frame is assumed to cover when the PSNR floor is turned into
    the cloak's L2 cap (a placement that covers more is scaled down to keep the floor)."""

    eps: float = 8 / 255
    steps: int = 200
    psnr_floor: float = 38.3
    variants: int = 2
    draws: int = 2
    frame: int = 224
    fill: float = 0.75
    margin: float = 0.15
    coverage: float = 0.35
    scale: tuple[float, float] = (0.7, 1.3)
    landmark_jitter: float = 0.06
    brightness: float = 0.12
    decoy: float = 0.5
    centroid: bool = True
    cap: float = 2.0
    momentum: float = 0.5
    smooth: float = 0.0
    step_fraction: float = 0.5
    jpeg_every: int = 2
    seed: int = 0
    checkpoint_every: int = 10


@dataclass
class Sample:
    """One enrolment face: a square crop around its frame, resized so the frame is ``frame`` pixels, with
    the anchor face and every member's face in crop coordinates."""

    crop: torch.Tensor  # [3,S,S]
    anchor: Face
    faces: dict[str, Face]  # member name -> its finder's face


def transform_face(face: Face, dx: float, dy: float, scale: float) -> Face:
    """``face`` moved by (dx, dy) then scaled about the origin by ``scale``."""
    left, top, right, bottom = face.box
    points = tuple(((x + dx) * scale, (y + dy) * scale) for x, y in face.landmarks)
    return replace(face, box=((left + dx) * scale, (top + dy) * scale, (right + dx) * scale, (bottom + dy) * scale),
                   landmarks=points, image_index=0)  # type: ignore[arg-type]


def _centre(face: Face) -> tuple[float, float]:
    return (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2


def same_face(anchor: Face, candidates: Sequence[Face]) -> Face | None:
    """The candidate whose box centre lies nearest the anchor's, within half the anchor's side."""
    ax, ay = _centre(anchor)
    side = max(anchor.box[2] - anchor.box[0], anchor.box[3] - anchor.box[1])
    best = min(candidates, key=lambda f: math.dist(_centre(f), (ax, ay)), default=None)
    return best if best is not None and math.dist(_centre(best), (ax, ay)) <= side / 2 else None


def make_sample(image: np.ndarray, name: str, anchor: Face, found: dict[str, list[Face]],
                members: Sequence[Member], settings: EnrollSettings) -> Sample:
    """The enrolment sample of one photo (HxWx3 uint8) for its face ``anchor`` (found by the cloak's finder),
    with the face each member's finder found at the same place (``found``: finder name -> faces)."""
    faces = {}
    for member in members:
        match = same_face(anchor, found.get(member.finder, []))
        if match is None:
            raise NoFaceError(f"{name}: face finder {member.finder} finds no face where the cloak's finder found "
                              f"it, so face model {member.name} cannot see it")
        faces[member.name] = match
    height, width = image.shape[:2]
    x0, y0, x1, y1 = footprint(anchor, settings.frame, 10**9, 10**9, settings.fill) or (0, 0, 1, 1)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * settings.margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    size = int(round(settings.frame * (1 + 2 * settings.margin)))
    photo = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    padded = F.pad(photo, (max(0, -left), max(0, left + int(side) - width), max(0, -top), max(0, top + int(side) - height)))
    crop = padded[:, max(0, top):max(0, top) + int(side), max(0, left):max(0, left) + int(side)]
    crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    scale = size / int(side)
    return Sample(crop, transform_face(anchor, -left, -top, scale),
                  {n: transform_face(f, -left, -top, scale) for n, f in faces.items()})


def decoys(variants: int, dims: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """A random unit direction per variant and member [K, D]: each variant's own decoy identity. Variants come
    in opposite pairs (variant 2i+1's decoy is minus variant 2i's), so photos carrying the two variants of a pair
    are pushed as far apart as the embedding space allows."""
    generator = torch.Generator().manual_seed(seed + 7919)
    out = {}
    for name, dim in dims.items():
        directions = F.normalize(torch.randn(variants, dim, generator=generator), dim=1)
        directions[1::2] = -directions[0::2][: variants // 2]
        out[name] = directions
    return out


def orthogonal_to(directions: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """``directions`` [N, D] (unit) with their component along ``embeddings`` ([N, D], or [1, D] for all) removed,
    renormalised: a decoy pull along them scatters protected photos without pulling any back towards the person's
    own embedding."""
    own = F.normalize(embeddings.to(directions), dim=1)
    return F.normalize(directions - (directions * own).sum(1, keepdim=True) * own, dim=1)


def photos_digest(samples: Sequence[Sample], settings: EnrollSettings, members: Sequence[Member]) -> str:
    """What a checkpoint belongs to: the enrolment crops, the settings and the models (never stored with the cloak)."""
    digest = hashlib.sha256(repr((settings, [m.name for m in members])).encode())
    for sample in samples:
        digest.update(torch.round(sample.crop * 255).to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def enroll_samples(samples: Sequence[Sample], members: Sequence[Member], settings: EnrollSettings, *,
                   anchor_finder: str, checkpoint: Path | None = None,
                   on_step: Callable[[int, int], None] | None = None) -> Cloak:
    """Optimise the cloak's variants over ``samples`` against every member; see the module docstring."""
    s = settings
    generator = torch.Generator().manual_seed(s.seed)
    frame_feather = feather(s.frame)
    with torch.no_grad():
        references = {m.name: torch.cat([m.model.embed(m.model.align(x.crop[None], [x.faces[m.name]]))
                                         for x in samples]) for m in members}
    if s.centroid:  # push away from the person (the mean of every photo), not from each photo's own embedding
        references = {n: r.mean(dim=0, keepdim=True).expand_as(r) for n, r in references.items()}
    targets = decoys(s.variants, {n: r.shape[1] for n, r in references.items()}, s.seed)
    # a decoy never leans back towards the person (one of each opposite pair did)
    targets = {n: orthogonal_to(t, references[n].mean(0, keepdim=True)) for n, t in targets.items()}
    # the frame's L2 cap, as if the frame covered ``coverage`` of the photo
    l2 = l2_cap(s.psnr_floor, 3 * s.frame * s.frame) / math.sqrt(s.coverage) if s.psnr_floor > 0 else None
    bank = torch.zeros(s.variants, 3, s.frame, s.frame)
    velocity = torch.zeros_like(bank)
    start = 0
    digest = photos_digest(samples, s, members)
    if checkpoint is not None and checkpoint.is_file():
        start, bank, velocity = _resume(checkpoint, digest, bank)
    if start == 0:
        bank = (torch.rand(bank.shape, generator=generator) * 2 - 1) * s.eps * 0.5
    size = samples[0].crop.shape[-1]
    for step in range(start, s.steps):
        g = torch.Generator().manual_seed(s.seed * 100_003 + step)  # a step's draws do not depend on a resume
        bank.requires_grad_(True)
        value = _objective(bank * frame_feather, samples, members, references, targets, s, size, step, g)
        (grad,) = torch.autograd.grad(value.sum(), bank)
        if s.smooth > 0:
            grad = gaussian_blur(grad, s.smooth)
        velocity = s.momentum * velocity + grad / grad.abs().flatten(1).mean(dim=1).clamp_min(1e-20).view(-1, 1, 1, 1)
        alpha = cosine_step(step, s.steps, s.step_fraction, s.step_fraction / 10)
        cap = None if l2 is None else torch.full((s.variants,), l2)
        bank = bank.detach() + alpha * s.eps * direction(velocity, bank.detach(), cap)
        bank = bank.clamp(-s.eps, s.eps)
        if cap is not None:
            bank = project_l2(bank, cap)
        if on_step:
            on_step(step + 1, s.steps)
        if checkpoint is not None and ((step + 1) % s.checkpoint_every == 0) and step + 1 < s.steps:
            _save_checkpoint(checkpoint, step + 1, bank, velocity, digest)
    bank = torch.round(bank.detach() * 255 * 64) / (255 * 64)  # stored to 1/64 of a level: no float noise
    return Cloak(bank.clamp(-s.eps, s.eps), eps=s.eps, finder=anchor_finder,
                 face_models=tuple(m.name for m in members), psnr_floor=s.psnr_floor, fill=s.fill,
                 info={"steps": s.steps, "photos": len(samples), "seed": s.seed})


def _objective(perturbations: torch.Tensor, samples: Sequence[Sample], members: Sequence[Member],
               references: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], s: EnrollSettings,
               size: int, step: int, g: torch.Generator) -> torch.Tensor:
    """One EOT draw per variant: a random enrolment sample, rescaled, re-lit, cloaked at jittered landmarks,
    sometimes JPEG'd, read by every member at moved crops. -> [K], more is more protection."""
    k = s.variants * s.draws
    rows = torch.arange(s.variants).repeat_interleave(s.draws)  # the variant each draw carries
    picks = torch.randint(len(samples), (k,), generator=g).tolist()
    zoom = s.scale[0] + (s.scale[1] - s.scale[0]) * float(torch.rand((), generator=g))
    side = max(64, int(round(size * zoom)))
    ratio = side / size
    crops = torch.stack([samples[i].crop for i in picks])
    crops = F.interpolate(crops, size=(side, side), mode="bilinear", align_corners=False, antialias=zoom < 1)
    gain = 1 + s.brightness * (torch.rand(k, 1, 1, 1, generator=g) * 2 - 1)
    shift = s.brightness / 2 * (torch.rand(k, 1, 1, 1, generator=g) * 2 - 1)
    lit = (crops * gain + shift).clamp(0, 1)
    anchors = [transform_face(samples[i].anchor, 0, 0, ratio) for i in picks]
    moved = jitter_faces(anchors, 1, g, scale=s.landmark_jitter, shift=s.landmark_jitter / 2, rotation_deg=3.0)
    thetas = torch.stack([placement_theta(face, s.frame, (0, 0, side, side), s.fill) for face in moved])
    x = (lit + warp(perturbations[rows], thetas, (side, side))).clamp(0, 1)
    if s.jpeg_every and step % s.jpeg_every == 0:
        x = jpeg_bpda(x, int(torch.randint(60, 95, (), generator=g)))
    total = torch.zeros(k)
    for member in members:
        faces = [transform_face(samples[i].faces[member.name], 0, 0, ratio).with_index(j) for j, i in enumerate(picks)]
        faces = jitter_faces(faces, 1, g, scale=0.05, shift=0.03, rotation_deg=3.0)
        chips = jitter_chips(member.model.align(x, faces), 1, g)
        embeddings = member.model.embed(chips)
        reference = references[member.name][picks]
        term = member.model.distance(embeddings, reference) / member.model.threshold
        term = s.cap * torch.tanh(term / s.cap)
        pull = F.cosine_similarity(embeddings, targets[member.name][rows].to(embeddings), dim=1)
        total = total + term + s.decoy * pull
    return torch.zeros(s.variants).index_add(0, rows, total) / s.draws


def _save_checkpoint(path: Path, step: int, bank: torch.Tensor, velocity: torch.Tensor, digest: str) -> None:
    from safetensors.torch import save

    from guardkit.cloak_file import write_atomically

    write_atomically(path, save({"bank": bank.contiguous(), "velocity": velocity.contiguous()},
                                metadata={"step": str(step), "digest": digest}))


def _resume(path: Path, digest: str, like: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(step, bank, velocity) from a checkpoint of this very enrolment; (0, ...) for any other or a damaged one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            bank, velocity = fh.get_tensor("bank"), fh.get_tensor("velocity")
    except (SafetensorError, OSError, KeyError):
        return 0, like, torch.zeros_like(like)
    if meta.get("digest") != digest or bank.shape != like.shape or velocity.shape != like.shape:
        return 0, like, torch.zeros_like(like)
    return int(meta.get("step", 0)), bank, velocity
