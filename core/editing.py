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
engine's registry (core never imports plugins; the built-in choices are ``guardkit.engine``'s DEFAULT_*).
Each photo is resized so that its longer side is ``resolution`` pixels and centre-cropped to multiples of 16
(FLUX packs the VAE's 8x latent 2x2), faces are found on that photo by ``face_finder`` (default: the first
face model's own finder), and the photo goes through the shared photo loop (``guardkit.photo_loop``): a
photo that fails (no face, ...) fails alone in one line, the result is checked finite, rounded to 8 bits and
written atomically (metadata stripped, never over an input) with a record of the settings that made it
(``edit_settings``), and photos already done under the same settings are skipped.
Each result carries, per face model, the distance between the edit and the source (the smallest over
the photo's faces: the face most at risk) and, with a target identity, the distance to the target
(the largest over the faces).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from guardkit.arrays import image_to_tensor
from guardkit.config import RunConfig
from guardkit.engine import DEFAULT_EDITOR, DEFAULT_FACE_FINDER, DEFAULT_FACE_MODEL, DEFAULT_FACE_PARSER
from guardkit.ensemble import finder_of
from guardkit.errors import CapabilityError, ConfigError, ImageError, NoFaceError
from guardkit.image_read import load_rgb, upright_size
from guardkit.photo_loop import Photo, PhotoLoop, gather, to_pixels
from guardkit.torch_settings import set_torch, torch_settings

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


def load_mask(path: str | Path, width: int, height: int, resolution: int | None = None) -> np.ndarray:
    """A mask file (white = edit) -> float32 HxW in [0,1] at ``width`` x ``height``.

    With ``resolution``, the mask first goes through the photo's own geometry (``fit_size``: longer side to
    ``resolution``, centre crop to multiples of 16), so a mask drawn on the original photo stays on the pixels
    it covers there; it is then resized to ``width`` x ``height`` (a no-op when the sizes already agree)."""
    from PIL import Image

    gray = load_rgb(Path(path)).astype(np.float32).mean(axis=2)
    pil = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8))
    if resolution is not None:
        (sw, sh), box = fit_size(pil.width, pil.height, resolution)
        if (sw, sh) != pil.size:
            pil = pil.resize((sw, sh), Image.BILINEAR)
        pil = pil.crop(box)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.BILINEAR)
    return np.asarray(pil).astype(np.float32) / 255.0


def paste_edit(edited: Any, source: Any) -> Any:
    """An edit [B,3,h,w] back onto the geometry of ``source`` [B,3,H,W]: an edit of the same aspect is resized;
    an edit of a different aspect is taken to be of ``source``'s centred largest region of the edit's aspect
    (as ``ip2p`` centre-crops a square), resized to that region and pasted there, ``source`` elsewhere."""
    import torch.nn.functional as F

    (h, w), (H, W) = edited.shape[-2:], source.shape[-2:]
    if (h, w) == (H, W):
        return edited
    if h * W == w * H:  # same aspect
        return F.interpolate(edited.float(), size=(H, W), mode="bilinear", align_corners=False)
    if h * W > w * H:  # the edit is relatively taller: full height, centred columns
        rh, rw = H, max(1, round(H * w / h))
    else:
        rh, rw = max(1, round(W * h / w)), W
    top, left = (H - rh) // 2, (W - rw) // 2
    out = source.detach().float().to(edited.device).clone()
    out[..., top:top + rh, left:left + rw] = F.interpolate(edited.float(), size=(rh, rw), mode="bilinear",
                                                           align_corners=False)
    return out


def edit_settings(*, prompt: str, source_prompt: str, editor: str, editor_part: Any, protect: str | None,
                  method: Any, face_models: Sequence[str], face_finder: str, face_parser: str | None,
                  target_identity: str | Path | None, mask: str | Path | None, resolution: int,
                  run: RunConfig) -> dict[str, Any]:
    """What decides an edit besides the photo, as JSON for its output's record (resume redoes an output made
    under other settings): prompts, editor and method with their full configs (weight folders left out), face
    models, finder and parser, the target identity and mask files by digest, resolution, seed, dtype, device."""
    from guardkit.image_save import file_digest
    from guardkit.protecting import _as_json

    def config_of(part: Any) -> Any:
        config = getattr(part, "config", None)
        options = _as_json(config) if config is not None else None
        if isinstance(options, dict):
            options = {k: v for k, v in options.items() if k != "path"}
        return options

    return {"prompt": prompt, "source_prompt": source_prompt, "editor": editor, "editor_options": config_of(editor_part),
            "protect": protect, "protect_options": config_of(method) if method is not None else None,
            "face_models": list(face_models), "face_finder": face_finder,
            "face_parser": face_parser if protect is not None and mask is None else None,
            "target_identity": file_digest(Path(target_identity)) if target_identity is not None else None,
            "mask": file_digest(Path(mask)) if mask is not None else None,
            "resolution": resolution, "seed": run.seed, "dtype": run.dtype, "device": run.device}


def edited_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(width, height)`` of the edit of a ``width`` x ``height`` photo (see ``fit_size``)."""
    _, (left, top, right, bottom) = fit_size(width, height, resolution)
    return right - left, bottom - top


@torch_settings()  # the run's threads hold for the call only: the caller's are put back
def edit_photos(
    engine,
    inputs: Sequence[str | Path],
    *,
    prompt: str,
    source_prompt: str = "",
    editor: str = DEFAULT_EDITOR,
    protect: str | None = None,
    face_models: Sequence[str] = (DEFAULT_FACE_MODEL,),
    face_finder: str | None = None,
    face_parser: str = DEFAULT_FACE_PARSER,
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
    ``face_finder`` None: the first face model's own finder (``guardkit.ensemble.finder_of``).
    """
    run = run or RunConfig()
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the edit prompt is empty: say what to change, e.g. --prompt \"a photo of a man with "
                          "blond hair\"")
    fit_size(MULTIPLE, MULTIPLE, resolution)  # validates resolution
    face_models = [n.strip() for n in face_models if n and n.strip()]
    inputs_ = gather(inputs, output_dir=output_dir, fmt=fmt)
    if mask is not None and not Path(mask).is_file():
        raise ImageError(f"{mask}: mask file not found")

    # parts: resolve every name first (cheap), then check, then load (weights)
    editor_part = engine.build_part("editor", editor, run, **dict(editor_options or {}))
    models = {name: engine.build_part("face_model", name, run) for name in face_models}
    if face_finder is None:
        face_finder = finder_of(engine.registry.get("face_model", face_models[0]).factory if face_models else None,
                                DEFAULT_FACE_FINDER)
    finder = engine.build_part("face_finder", face_finder, run)
    _check_schemes(face_finder, finder, models)
    loop = PhotoLoop(inputs_, EditResult, fmt=fmt, resume=resume, on_start=on_start, on_photo=on_photo,
                     expected_size=lambda path: edited_size(*upright_size(path), resolution))
    if not inputs_.paths:  # only bad paths: every name checked above (usage errors first), then each named
        if protect is not None:
            engine.registry.get("edit_method", protect)
            engine.registry.get("face_parser", face_parser)
        loop.start()
        return loop.results
    method = None
    if protect is not None:
        engine.check_editor(protect, editor)  # what it needs from the editor, before any weight loads
        parser = engine.build_part("face_parser", face_parser, run) if mask is None else None
        if not models:
            raise CapabilityError(f"edit method {protect!r} needs at least one face model (--fr)")
        method = engine.build_part("edit_method", protect, run, editor=editor_part, face_models=list(models.values()),
                                   face_parser=parser, **dict(protect_options or {}))
        method.load()  # checks gradients and the editor's abilities, loads every part
    else:
        if protect_options:
            raise ConfigError("protection options were given without --protect")
        editor_part.load()
        for model in models.values():
            model.load()
    finder.load()
    loop.settings = edit_settings(prompt=prompt, source_prompt=source_prompt, editor=editor, editor_part=editor_part,
                                  protect=protect, method=method, face_models=face_models, face_finder=face_finder,
                                  face_parser=face_parser, target_identity=target_identity, mask=mask,
                                  resolution=resolution, run=run)
    set_torch(threads=run.threads or None)
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

    takes_source = "source_prompt" in inspect.signature(editor_part.edit).parameters

    def load(path: Path) -> Photo:
        image = prepare(load_rgb(path), resolution)
        faces = finder.find(image)
        if not faces:
            raise NoFaceError(f"{path}: no face found (nothing to protect or to edit)")
        return Photo(path, image, faces)

    def process(batch: list[Photo]) -> list[tuple[EditResult, np.ndarray]]:
        import torch

        (photo,) = batch
        started = time.perf_counter()
        x = image_to_tensor(photo.image, device)
        report = None
        if method is not None:
            user_mask = None
            if mask is not None:
                user_mask = torch.from_numpy(load_mask(mask, photo.image.shape[1], photo.image.shape[0],
                                                       resolution))[None, None]
            edited, report = method.protect(x, photo.faces, prompt, source_prompt=source_prompt, seed=run.seed,
                                            target_embeddings=target, mask=user_mask)
        else:
            kwargs = {"source_prompt": source_prompt} if takes_source else {}
            edited = editor_part.edit(x, prompt, seed=run.seed, **kwargs)
        if edited.shape[-2:] != x.shape[-2:]:  # editors with their own resolution (ip2p edits the centre square)
            edited = paste_edit(edited, x)
        out8 = to_pixels(edited, what="the edit")
        result = EditResult(photo.path, "protected" if method is not None else "edited", faces=len(photo.faces),
                            size=(photo.image.shape[1], photo.image.shape[0]), report=report)
        _score(result, models, x, out8.float().div(255).to(device), photo.faces, target)
        result.seconds = time.perf_counter() - started
        return [(result, out8[0].permute(1, 2, 0).cpu().numpy())]

    def keep(result: EditResult, pixels: np.ndarray) -> None:
        result.edited = pixels

    loop.start()
    return loop.run(load, process, keep=keep)


def _check_schemes(finder_name: str, finder: Any, models: Mapping[str, Any]) -> None:
    """Every face model aligns from the landmarks ``finder`` gives (a one-line CapabilityError otherwise)."""
    scheme = getattr(finder, "scheme", None)
    for name, model in models.items():
        if scheme not in getattr(model, "schemes", ()):
            raise CapabilityError(f"face finder {finder_name!r} gives {scheme} landmarks; face model {name!r} "
                                  f"aligns from {', '.join(getattr(model, 'schemes', ())) or 'none'}")


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
