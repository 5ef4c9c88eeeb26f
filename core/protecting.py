"""``Engine.protect`` on files: a method's protection run over the shared photo loop (``guardkit.photo_loop``).

Each photo is loaded upright, its faces found once by the method's face finders, photos of one size are
protected together, and every result is projected onto the budget, checked finite and rounded to 8 bits
before anything is written; what is measured and reported (L-inf, PSNR, face distances) is what the saved
file decodes to, JPEG's loss included. Each output's record names the settings that made it
(:func:`output_settings`), so that resume skips only what this run would write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from guardkit.config import Budget, RunConfig
from guardkit.image_read import animated_frames, load_rgb, upright_size
from guardkit.image_save import as_saved, record_output, save_image
from guardkit.image_paths import plan_outputs
from guardkit.photo_loop import Inputs, Photo, PhotoLoop, failure_line, holds_another_photo, to_pixels
from guardkit.types import Face

if TYPE_CHECKING:
    from guardkit.engine import BuiltMethod


@dataclass
class PhotoResult:
    """What happened to one photo. ``status``: protected, skipped (already done) or failed."""

    source: Path
    status: str
    output: Path | None = None
    error: str = ""
    note: str = ""  # one line worth saying about a photo that was protected (e.g. an animated GIF's first frame)
    faces: int = 0
    linf: float = 0.0  # largest pixel change, in [0, 1] units
    psnr: float = 0.0  # whole photo, dB
    fr_distance: float = math.nan  # smallest clean-vs-protected distance over the faces, first model's metric
    distances: dict[str, float] = field(default_factory=dict)  # the same for every attacked face model
    seconds: float = 0.0
    protected: np.ndarray | None = field(default=None, repr=False)


@dataclass
class ProtectResult:
    """``face_model``/``threshold``: the first face model's; ``thresholds``: every attacked model's;
    ``budget``: the budget the photos were protected under (None where the runner does not say); ``method``: the
    method that ran (with a cloak, the cloak's own or the refining one)."""

    photos: list[PhotoResult]
    face_model: str = ""
    threshold: float = math.nan
    thresholds: dict[str, float] = field(default_factory=dict)
    budget: Budget | None = None
    method: str = ""

    @property
    def failed(self) -> list[PhotoResult]:
        return [p for p in self.photos if p.status == "failed"]

    def save(self, out_dir: str | Path, *, fmt: str = "png") -> list[Path]:
        """Write protected photos kept in memory (``protect`` without ``output_dir``), each with its record;
        a name that holds another photo's output is passed over."""
        kept = [p for p in self.photos if p.protected is not None]
        plan = plan_outputs([p.source for p in kept], Path(out_dir), fmt, held=holds_another_photo)
        for photo in kept:
            save_image(photo.protected, plan[photo.source], fmt=fmt)
            record_output(plan[photo.source], photo.source)
            photo.output = plan[photo.source]
        return [plan[p.source] for p in kept]


def protect_loop(inputs: Inputs, *, fmt: str, resume: bool, on_start: Callable[[int], None] | None,
                 on_photo: Callable[[PhotoResult], None] | None) -> PhotoLoop[PhotoResult]:
    """The photo loop of a protection: an output is finished when it decodes at the input's upright size."""
    return PhotoLoop(inputs, PhotoResult, fmt=fmt, resume=resume, expected_size=upright_size, on_start=on_start,
                     on_photo=on_photo)


def protect_photos(loop: PhotoLoop[PhotoResult], built: "BuiltMethod", run: RunConfig,
                   on_step: Callable[[int, int], None] | None = None) -> ProtectResult:
    """Run ``built``'s method over ``loop``'s photos under ``run`` (budget, batch size, device, dtype)."""
    device = run.torch_device()
    loop.settings = output_settings(built, run)

    def load(path: Path) -> Photo:
        image = load_rgb(path)
        frames = animated_frames(path)
        note = (f"{path}: animated image ({frames} frames): protected its first frame only, written as a still "
                "image") if frames > 1 else ""
        return Photo(path, image, built.find_faces(image, path) if built.finders else [], note)

    def process(batch: list[Photo]) -> list[tuple[PhotoResult, np.ndarray]]:
        return _protect_batch(built, run, device, batch, on_step, loop.fmt)

    def keep(result: PhotoResult, pixels: np.ndarray) -> None:
        result.protected = pixels

    loop.start()
    loop.run(load, process, keep=keep, batch_size=run.batch_size)
    members = built.members
    thresholds = {m.name: float(m.model.threshold) for m in members}
    return ProtectResult(loop.results, face_model=members[0].name if members else "",
                         threshold=thresholds[members[0].name] if members else math.nan, thresholds=thresholds,
                         budget=run.budget)


def output_settings(built: "BuiltMethod", run: RunConfig) -> dict[str, Any]:
    """What decides a protected photo besides the photo, as JSON for its output's record: the method (its class
    and its options, a cloak's perturbations by digest), the budget, seed, dtype and device, the face models
    and finders. Threads, batch size and weight folders are left out."""
    method = built.method
    options = {k: v for k, v in getattr(method, "__dict__", {}).items() if k != "run" and not k.startswith("_")}
    return {"method": f"{type(method).__module__}.{type(method).__qualname__}", "options": _as_json(options),
            "budget": dataclasses.asdict(run.budget), "seed": run.seed, "dtype": run.dtype, "device": run.device,
            "face_models": [[m.name, m.finder] for m in built.members], "finders": sorted(built.finders)}


def _as_json(value: Any, depth: int = 0) -> Any:
    """``value`` for a settings record: numbers, text, containers and dataclasses as such, tensors and arrays
    by digest, anything else (a model, a device) by its type."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > 4:
        return type(value).__qualname__
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_json(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _as_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_as_json(v, depth + 1) for v in value]
    if hasattr(value, "detach") and hasattr(value, "shape"):  # a tensor
        value = value.detach().float().cpu().numpy()
    if isinstance(value, np.ndarray):
        return f"{value.shape}:{hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}"
    return type(value).__qualname__


def _protect_batch(built: "BuiltMethod", run: RunConfig, device: Any, batch: list[Photo],
                   on_step: Callable[[int, int], None] | None,
                   fmt: str = "png") -> list[tuple[PhotoResult, np.ndarray]]:
    import torch

    from guardkit.attack import reporting_steps

    started = time.perf_counter()
    clean = torch.from_numpy(np.stack([p.image for p in batch])).to(device).permute(0, 3, 1, 2).float().div(255)
    faces = [f.with_index(i) for i, p in enumerate(batch) for f in p.faces]
    with torch.autocast(device.type, dtype=run.torch_dtype(), enabled=run.dtype != "float32"), \
            reporting_steps(on_step):
        adv = built.method.protect(clean, faces, run.budget)
    adv8 = to_pixels(adv, clean, run.budget)  # never trust a method
    pixels = [adv8[i].permute(1, 2, 0).cpu().numpy() for i in range(len(batch))]
    saved = [as_saved(p, fmt) for p in pixels]  # what the file decodes to: measured and reported
    seen = torch.from_numpy(np.stack(saved)).to(device).permute(0, 3, 1, 2).float().div(255)
    members = built.members
    distances = {m.name: face_distances(m.model, clean, seen, m.faces(faces)) for m in members}
    seconds = (time.perf_counter() - started) / len(batch)
    method_notes = getattr(built.method, "notes", None) or {}  # optional: a method's one line per photo
    unprotected = getattr(built.method, "unplaced", None) or {}  # optional: photos the method left as they were, why
    done = []
    for i, photo in enumerate(batch):
        if i in unprotected:
            done.append((PhotoResult(photo.path, "failed", error=failure_line(photo.path, unprotected[i])), pixels[i]))
            continue
        protected, kept = pixels[i], saved[i]
        smallest = {m.name: min((d for d, f in zip(distances[m.name], m.faces(faces)) if f.image_index == i),
                                default=math.nan) for m in members}
        counted = members[0].faces(photo.faces) if members else photo.faces
        done.append((PhotoResult(photo.path, "protected", faces=len(counted), seconds=seconds,
                                 note="; ".join(n for n in (photo.note, method_notes.get(i, "")) if n),
                                 linf=float(np.abs(kept.astype(np.int16) - photo.image).max()) / 255,
                                 psnr=psnr(photo.image, kept), distances=smallest,
                                 fr_distance=smallest[members[0].name] if members else math.nan), protected))
    return done


def face_distances(model: Any, clean: Any, adv: Any, faces: Sequence[Face]) -> list[float]:
    """The face model's distance between each face of ``clean`` and of ``adv`` (aligned alike)."""
    if model is None or not faces:
        return []
    import torch

    with torch.no_grad():
        a = model.embed(model.align(clean, faces))
        b = model.embed(model.align(adv, faces))
        return model.distance(a, b).tolist()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
