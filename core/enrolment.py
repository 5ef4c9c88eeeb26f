"""``Engine.enroll``: from photo files of one person to a ``.cloak`` file.

Finds every face with the cloak's finder and each face model's own finder, picks the person's face in
photos that show several people (the one most like the person's single-face photos under the first face
model), adds each photo's mirror image, optimises (``guardkit.enroll``) with a checkpoint beside the output
so an interrupted enrolment resumes, and writes the cloak atomically. A photo that cannot be used (unreadable,
no face) is reported and the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from guardkit.cloak import Cloak
from guardkit.cloak_file import save_cloak
from guardkit.config import RunConfig
from guardkit.engine import DEFAULT_CLOAK_FINDER, DEFAULT_CLOAK_METHOD, DEFAULT_FACE_FINDER
from guardkit.ensemble import Member, finder_of
from guardkit.enroll import EnrollSettings, Sample, enroll_samples, make_sample, same_face
from guardkit.errors import CapabilityError, ConfigError, GuardkitError, ImageError, NoFaceError
from guardkit.imageio import IMAGE_SUFFIXES, collect_inputs, load_rgb
from guardkit.types import Face

#: strength -> (L-inf eps, whole-photo PSNR floor): the budgets of ``guardkit run --strength``
CLOAK_STRENGTHS = {"low": (4 / 255, 42.3), "mid": (8 / 255, 38.3), "high": (16 / 255, 33.3)}
DEFAULT_CLOAK_STRENGTH = "mid"


@dataclass
class EnrollResult:
    """The cloak, where it was written, the photos it learnt from and the ones that could not be used."""

    cloak: Cloak
    output: Path | None
    used: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def enroll_settings(strength: str | None, *, steps: int | None = None, variants: int | None = None,
                    seed: int = 0) -> EnrollSettings:
    """The enrolment settings of a named strength (``CLOAK_STRENGTHS``) with explicit overrides."""
    name = strength or DEFAULT_CLOAK_STRENGTH
    if name not in CLOAK_STRENGTHS:
        raise ConfigError(f"unknown strength {name!r}: choose {', '.join(CLOAK_STRENGTHS)}")
    eps, psnr_floor = CLOAK_STRENGTHS[name]
    settings = EnrollSettings(eps=eps, psnr_floor=psnr_floor, seed=seed)
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}")
        settings = replace(settings, steps=steps)
    if variants is not None:
        if not 1 <= variants <= 32:
            raise ConfigError(f"--variants must be 1-32, got {variants}")
        settings = replace(settings, variants=variants)
    return settings


def build_members(engine: Any, models: Sequence[str], finder: str, run: RunConfig) -> tuple[list[Member], dict[str, Any]]:
    """The face models (each with its own finder) and every finder needed, checked before any weight loads."""
    specs = []
    for name in models:
        spec = engine.registry.get("face_model", name)
        if not spec.capabilities.get("differentiable", False):
            raise CapabilityError(f"face model {name!r} has no gradients: it cannot be enrolled against")
        finder_spec = engine.registry.get("face_finder", finder_of(spec.factory, DEFAULT_FACE_FINDER))
        if finder_spec.capabilities.get("scheme") not in spec.capabilities.get("schemes", ()):
            raise CapabilityError(f"face model {name!r} cannot align {finder_spec.name}'s landmarks")
        specs.append((spec, finder_spec))
    anchor = engine.registry.get("face_finder", finder)
    names = dict.fromkeys([anchor.name, *(f.name for _, f in specs)])
    finders = {name: engine.load_part("face_finder", name, run) for name in names}
    members = [Member(spec.name, engine.load_part("face_model", spec.name, run), finder_spec.name)
               for spec, finder_spec in specs]
    return members, finders


def find_all(image: np.ndarray, finders: dict[str, Any]) -> dict[str, list[Face]]:
    return {name: [replace(f, finder=name) for f in finder.find(image)] for name, finder in finders.items()}


def _area(face: Face) -> float:
    return (face.box[2] - face.box[0]) * (face.box[3] - face.box[1])


def pick_person(photos: list[tuple[Path, np.ndarray, dict[str, list[Face]]]], anchor_finder: str,
                first: Member) -> dict[Path, Face]:
    """The person's face in each photo: the only face where there is one; in a photo of several people, the
    face nearest (under ``first``) the mean of the single-face photos (the largest face when there are none)."""
    chosen: dict[Path, Face] = {}
    identity = []
    for path, image, found in photos:
        anchors = found[anchor_finder]
        if len(anchors) == 1:
            chosen[path] = anchors[0]
            own = same_face(anchors[0], found[first.finder])
            if own is not None:
                identity.append(_embedding(first, image, own))
    centre = torch.stack(identity).mean(dim=0, keepdim=True) if identity else None
    for path, image, found in photos:
        if path in chosen:
            continue
        anchors = sorted(found[anchor_finder], key=lambda f: -_area(f))
        if centre is None:
            chosen[path] = anchors[0]
            continue
        scored = []
        for face in anchors:
            own = same_face(face, found[first.finder])
            if own is not None:
                scored.append((float(first.model.distance(_embedding(first, image, own), centre)), face))
        chosen[path] = min(scored, key=lambda t: t[0])[1] if scored else anchors[0]
    return chosen


def _embedding(member: Member, image: np.ndarray, face: Face) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        return member.model.embed(member.model.align(x, [face.with_index(0)]))


def mirrored(image: np.ndarray, face: Face, finders: dict[str, Any]) -> tuple[np.ndarray, Face, dict[str, list[Face]]]:
    """The mirror image of a photo, its faces found again, and the mirror of ``face`` among them."""
    flipped = np.ascontiguousarray(image[:, ::-1])
    found = find_all(flipped, finders)
    width = image.shape[1]
    left, top, right, bottom = face.box
    target = replace(face, box=(width - right, top, width - left, bottom))
    match = same_face(target, found[face.finder])
    if match is None:
        raise NoFaceError("the mirrored face was not found again")
    return flipped, match, found


def enroll_photos(engine: Any, inputs: Sequence[str | Path], *, output: str | Path | None = None,
                  face_models: Sequence[str], finder: str = DEFAULT_CLOAK_FINDER, settings: EnrollSettings,
                  strength: str = DEFAULT_CLOAK_STRENGTH, run: RunConfig | None = None, resume: bool = True,
                  on_photo: Callable[[Path, str], None] | None = None,
                  on_step: Callable[[int, int], None] | None = None) -> EnrollResult:
    """Learn a cloak from ``inputs`` (photos or folders of one person) and write it to ``output``."""
    started = time.perf_counter()
    run = run or RunConfig()
    bad: list[tuple[Path, str]] = []
    paths = collect_inputs([Path(p) for p in inputs], bad)
    if not paths:
        reasons = "; ".join(message for _, message in bad) or f"looked for {', '.join(IMAGE_SUFFIXES)}"
        raise ImageError(f"no photos to enrol in {', '.join(str(p) for p in inputs)} ({reasons})")
    members, finders = build_members(engine, face_models, finder, run)
    failed = list(bad)
    photos = []
    for path in paths:
        try:
            image = load_rgb(path)
            found = find_all(image, finders)
            if not found[finder]:
                raise NoFaceError(f"{path}: no face found")
            photos.append((path, image, found))
        except GuardkitError as exc:
            failed.append((path, str(exc)))
            if on_photo:
                on_photo(path, str(exc))
    chosen = pick_person(photos, finder, members[0]) if photos else {}
    samples: list[Sample] = []
    used = []
    for path, image, found in photos:
        try:
            face = chosen[path]
            original = make_sample(image, str(path), face, found, members, settings)
            flipped, twin, twin_found = mirrored(image, face, finders)
            mirror = make_sample(flipped, f"{path} (mirrored)", twin, twin_found, members, settings)
            samples += [original, mirror]  # both or neither: a photo listed as failed trains nothing
            used.append(path)
            if on_photo:
                on_photo(path, "")
        except GuardkitError as exc:
            failed.append((path, str(exc) if str(path) in str(exc) else f"{path}: {exc}"))
            if on_photo:
                on_photo(path, str(exc))
    if not samples:
        raise NoFaceError("no photo could be enrolled: " + "; ".join(message for _, message in failed))
    checkpoint = None
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = output.with_name(f".{output.name}.partial")
        if not resume:
            checkpoint.unlink(missing_ok=True)
    cloak = enroll_samples(samples, members, settings, anchor_finder=finder, checkpoint=checkpoint, on_step=on_step)
    seconds = time.perf_counter() - started
    cloak = replace(cloak, kind=DEFAULT_CLOAK_METHOD,
                    info={**cloak.info, "photos": len(used), "strength": strength, "seconds": round(seconds, 1)})
    if output is not None:
        save_cloak(cloak, output)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
    return EnrollResult(cloak, output, used, failed, seconds)
