"""Editing photos with a text prompt, plainly or privacy-preserving (``guardkit edit``).

```python
import guardkit
from guardkit.editing import edit_photos

engine = guardkit.Engine()
results = edit_photos(engine, ["me.jpg"], prompt="a photo of a man with blond hair",
                      source_prompt="a photo of a man", protect="flux-guard", face_models=("dlib",),
                      editor_options={"path": "weights/black-forest-labs/FLUX.1-dev"}, output_dir="out/")
```

Without ``protect`` each photo goes through ``editor.edit`` (a plain edit); with an edit method
(``flux-guard``) through its ``protect``, which drives the editor's sampling loop. Parts come from the
engine's registry (core never imports plugins). Each photo is resized so that its longer side is
``resolution`` pixels and centre-cropped to multiples of 16 (FLUX packs the VAE's 8x latent 2x2), faces are
found on that photo (a photo without a face fails alone, the batch goes on), and the result is written
atomically (metadata stripped, never over an input; photos already done are skipped with ``resume``).
Each result carries, per face model, the distance between the edit and the source (the smallest over
the photo's faces: the face most at risk) and, with a target identity, the distance to the target
(the largest over the faces).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from guardkit.config import RunConfig
from guardkit.arrays import image_to_tensor
from guardkit.errors import (
    CapabilityError,
    ConfigError,
    GuardkitError,
    ImageError,
    NoFaceError,
)
from guardkit.imageio import collect_inputs, is_done, load_rgb, plan_outputs, save_image

#: pixels per latent token side for FLUX (VAE 8x, packing 2x2)
MULTIPLE = 16


@dataclass
class EditResult:
    """One photo. ``status``: ``edited`` (plain), ``protected`` (with an edit method), ``skipped`` (already
    done) or ``failed`` (``error`` says why, in one line). ``distances``: face model -> distance between the
    edit and the source in the model's metric; ``matches``: face model -> whether that distance is below the
    model's threshold (the edit still links to the person); ``target_distances``: face model -> distance to
    the target identity. ``report``: the edit method's report (history of the optimisation, mask...)."""

    source: Path
    status: str
    output: Path | None = None
    error: str = ""
    faces: int = 0
    size: tuple[int, int] = (0, 0)  # (width, height) edited
    distances: dict[str, float] = field(default_factory=dict)
    matches: dict[str, bool] = field(default_factory=dict)
    target_distances: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    edited: np.ndarray | None = field(default=None, repr=False)
    report: Any = field(default=None, repr=False)


def fit_size(width: int, height: int, resolution: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """``(scaled (w, h), crop box (left, top, right, bottom) in the scaled photo)``: the longer side becomes
    ``resolution``, then each side is centre-cropped down to a multiple of 16."""
    if resolution < MULTIPLE or resolution % MULTIPLE:
        raise ConfigError(f"resolution must be a multiple of {MULTIPLE} (>= {MULTIPLE}), got {resolution}")
    scale = resolution / max(width, height)
    sw, sh = max(MULTIPLE, round(width * scale)), max(MULTIPLE, round(height * scale))
    cw, ch = sw - sw % MULTIPLE, sh - sh % MULTIPLE
    left, top = (sw - cw) // 2, (sh - ch) // 2
    return (sw, sh), (left, top, left + cw, top + ch)


def prepare(image: np.ndarray, resolution: int) -> np.ndarray:
    """HxWx3 uint8 -> the editor's input (see ``fit_size``), uint8, resized with Lanczos."""
    from PIL import Image

    (sw, sh), box = fit_size(image.shape[1], image.shape[0], resolution)
    pil = Image.fromarray(image)
    if (sw, sh) != pil.size:
        pil = pil.resize((sw, sh), Image.LANCZOS)
    return np.asarray(pil.crop(box)).copy()


def load_mask(path: str | Path, width: int, height: int) -> np.ndarray:
    """A mask file (white = edit) resized to ``width`` x ``height`` -> float32 HxW in [0,1]."""
    from PIL import Image

    gray = load_rgb(Path(path)).astype(np.float32).mean(axis=2)
    pil = Image.fromarray(gray.astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(pil).astype(np.float32) / 255.0


def _build(engine, kind: str, name: str, run: RunConfig, options: Mapping[str, Any] | None = None) -> Any:
    part = engine.registry.get(kind, name).factory(run, **dict(options or {}))
    return part


def edit_photos(
    engine,
    inputs: Sequence[str | Path],
    *,
    prompt: str,
    source_prompt: str = "",
    editor: str = "flux-edit",
    protect: str | None = None,
    face_models: Sequence[str] = ("dlib",),
    face_finder: str = "dlib",
    face_parser: str = "landmarks",
    target_identity: str | Path | None = None,
    mask: str | Path | None = None,
    resolution: int = 512,
    run: RunConfig | None = None,
    output_dir: str | Path | None = None,
    fmt: str = "png",
    resume: bool = True,
    editor_options: Mapping[str, Any] | None = None,
    protect_options: Mapping[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_photo: Callable[[EditResult], None] | None = None,
) -> list[EditResult]:
    """Edit photo files (or folders of them) under ``prompt``; with ``protect``, privacy-preserving.

    Raises a one-line ``GuardkitError`` before any photo for a bad prompt, an unknown part, a part that
    cannot serve, or a missing weight; after that, a photo that fails is reported in its ``EditResult``
    and the others go on. Without ``output_dir`` the edits are kept in memory (``EditResult.edited``).
    """
    import torch

    run = run or RunConfig()
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the edit prompt is empty: say what to change, e.g. --prompt \"a photo of a man with "
                          "blond hair\"")
    fit_size(MULTIPLE, MULTIPLE, resolution)  # validates resolution
    face_models = [n.strip() for n in face_models if n and n.strip()]
    bad: list[tuple[Path, str]] = []  # a missing path, a broken link, ...: failed photos, never a stop
    paths = collect_inputs([Path(p) for p in inputs], bad)
    plan = plan_outputs(paths, Path(output_dir), fmt) if output_dir is not None else {}
    if mask is not None and not Path(mask).is_file():
        raise ImageError(f"{mask}: mask file not found")

    # parts: resolve every name first (cheap), then check, then load (weights)
    editor_part = _build(engine, "editor", editor, run, editor_options)
    finder = _build(engine, "face_finder", face_finder, run)
    scheme = getattr(finder, "scheme", None)
    models = {name: _build(engine, "face_model", name, run) for name in face_models}
    for name, model in models.items():
        if scheme not in getattr(model, "schemes", ()):
            raise CapabilityError(f"face finder {face_finder!r} gives {scheme} landmarks; face model {name!r} "
                                  f"aligns from {', '.join(getattr(model, 'schemes', ())) or 'none'}")
    if bad and not paths:  # only bad paths: every name checked above (usage errors first), then each named
        if protect is not None:
            engine.registry.get("edit_method", protect)
            engine.registry.get("face_parser", face_parser)
        failed = [EditResult(path, "failed", error=message) for path, message in bad]
        if on_start:
            on_start(len(failed))
        for result in failed:
            if on_photo:
                on_photo(result)
        return failed
    method = None
    if protect is not None:
        spec = engine.registry.get("edit_method", protect)
        parser = _build(engine, "face_parser", face_parser, run) if mask is None else None
        if not models:
            raise CapabilityError(f"edit method {protect!r} needs at least one face model (--fr)")
        method = spec.factory(run, editor=editor_part, face_models=list(models.values()), face_parser=parser,
                              **dict(protect_options or {}))
        method.load()  # checks gradients and the editor's abilities, loads every part
    else:
        if protect_options:
            raise ConfigError("protection options were given without --protect")
        editor_part.load()
        for model in models.values():
            model.load()
    finder.load()
    if run.threads:
        torch.set_num_threads(run.threads)
    device = run.torch_device()

    target = None
    if target_identity is not None:
        if method is None:
            raise ConfigError("--target-identity needs --protect (impersonation is a protection)")
        timage = prepare(load_rgb(Path(target_identity)), resolution)
        tfaces = finder.find(timage)
        if not tfaces:
            raise NoFaceError(f"{target_identity}: no face found in the target identity photo")
        target = method.identity(image_to_tensor(timage, device), tfaces[:1])

    results: list[EditResult] = []
    if on_start:
        on_start(len(paths) + len(bad))

    def finish(result: EditResult) -> None:
        results.append(result)
        if on_photo:
            on_photo(result)

    for path, message in bad:
        finish(EditResult(path, "failed", error=message))

    import inspect

    takes_source = "source_prompt" in inspect.signature(editor_part.edit).parameters
    for path in paths:
        if path in plan and resume and is_done(plan[path]):
            finish(EditResult(path, "skipped", output=plan[path]))
            continue
        started = time.perf_counter()
        try:
            original = load_rgb(path)
            image = prepare(original, resolution)
            faces = finder.find(image)
            if not faces:
                raise NoFaceError(f"{path}: no face found (nothing to protect or to edit)")
            x = image_to_tensor(image, device)
            report = None
            if method is not None:
                user_mask = None
                if mask is not None:
                    user_mask = torch.from_numpy(load_mask(mask, image.shape[1], image.shape[0]))[None, None]
                edited, report = method.protect(x, faces, prompt, source_prompt=source_prompt, seed=run.seed,
                                                target_embeddings=target, mask=user_mask)
            else:
                kwargs = {"source_prompt": source_prompt} if takes_source else {}
                edited = editor_part.edit(x, prompt, seed=run.seed, **kwargs)
            if edited.shape[-2:] != x.shape[-2:]:  # editors with their own resolution (ip2p)
                edited = torch.nn.functional.interpolate(edited.float(), size=tuple(x.shape[-2:]), mode="bilinear",
                                                         align_corners=False)
            if not torch.isfinite(edited).all():
                raise GuardkitError("the edit produced non-finite pixels")
            out8 = torch.round(edited.detach().float().clamp(0, 1) * 255).to(torch.uint8)
            result = EditResult(path, "protected" if method is not None else "edited", faces=len(faces),
                                size=(image.shape[1], image.shape[0]), report=report)
            _score(result, models, x, out8.float().div(255).to(device), faces, target)
            array = out8[0].permute(1, 2, 0).cpu().numpy()
            if path in plan:
                save_image(array, plan[path], fmt=fmt)
                result.output = plan[path]
            else:
                result.edited = array
        except GuardkitError as exc:
            message = str(exc)
            finish(EditResult(path, "failed", error=message if str(path) in message else f"{path}: {message}"))
            continue
        except (RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            finish(EditResult(path, "failed", error=f"{path}: {type(exc).__name__}: {first}"))
            continue
        result.seconds = time.perf_counter() - started
        finish(result)
    return results


def _score(result: EditResult, models: Mapping[str, Any], source, edited, faces, target) -> None:
    """Fill the per-model distances edit<->source (smallest over faces) and edit<->target (largest)."""
    import torch

    with torch.no_grad():
        for i, (name, model) in enumerate(models.items()):
            a = model.embed(model.align(source, faces))
            b = model.embed(model.align(edited, faces))
            d = model.distance(a, b)
            result.distances[name] = float(d.min())
            threshold = float(getattr(model, "threshold", math.nan))
            result.matches[name] = bool(result.distances[name] < threshold)
            if target is not None:
                t = target[i].to(b).expand_as(b)
                result.target_distances[name] = float(model.distance(b, t).max())
