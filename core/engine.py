"""``Engine``: owns a fresh plugin manager and registry, checks parts, and runs protections on files.

```python
import guardkit
engine = guardkit.Engine()
result = engine.protect(["me.jpg"])              # fr-cloak against dlib, eps 4/255
result.save("protected/")
```
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from guardkit.config import RunConfig
from guardkit.errors import CapabilityError, GuardkitError, ImageError, NoFaceError
from guardkit.imageio import IMAGE_SUFFIXES, collect_inputs, is_done, load_rgb, plan_outputs, save_image
from guardkit.registry import PluginError, Registry, make_plugin_manager
from guardkit.types import Face, PartSpec, WeightedLoss

DEFAULT_METHOD = "fr-cloak"
DEFAULT_FACE_MODEL = "dlib"
DEFAULT_FACE_FINDER = "dlib"
DEFAULT_ENCODER = "sd-vae"


@dataclass
class PhotoResult:
    """What happened to one photo. ``status``: protected, skipped (already done) or failed."""

    source: Path
    status: str
    output: Path | None = None
    error: str = ""
    faces: int = 0
    linf: float = 0.0  # largest pixel change, in [0, 1] units
    psnr: float = 0.0  # whole photo, dB
    fr_distance: float = math.nan  # smallest clean-vs-protected distance over the faces, model's metric
    seconds: float = 0.0
    protected: np.ndarray | None = field(default=None, repr=False)


@dataclass
class ProtectResult:
    photos: list[PhotoResult]
    face_model: str = ""
    threshold: float = math.nan

    @property
    def failed(self) -> list[PhotoResult]:
        return [p for p in self.photos if p.status == "failed"]

    def save(self, out_dir: str | Path, *, fmt: str = "png") -> list[Path]:
        """Write protected photos kept in memory (``protect`` without ``output_dir``)."""
        kept = [p for p in self.photos if p.protected is not None]
        plan = plan_outputs([p.source for p in kept], Path(out_dir), fmt)
        for photo in kept:
            save_image(photo.protected, plan[photo.source], fmt=fmt)
            photo.output = plan[photo.source]
        return [plan[p.source] for p in kept]


class Engine:
    """A registry of parts built from the ``guardkit`` entry points (plus ``plugins`` given here)."""

    def __init__(self, *, plugins: Iterable[object] = (), entry_points: bool = True,
                 disabled: Iterable[str] = ()) -> None:
        self.pm, self.plugin_errors = make_plugin_manager(entry_points=entry_points, plugins=plugins,
                                                          blocked=disabled)
        self.registry = Registry.from_plugin_manager(self.pm, self.plugin_errors)

    @property
    def errors(self) -> list[PluginError]:
        return self.plugin_errors

    # ----------------------------------------------------------------------------- parts
    def load_part(self, kind: str, name: str, run: RunConfig, **options: Any) -> Any:
        """The part ``name`` of ``kind`` built with ``options`` and loaded (weights on the run's device)."""
        part = self.registry.get(kind, name).factory(run, **options)
        part.load()
        return part

    def load_purifier(self, spec: str, run: RunConfig) -> Any:
        """A purifier from a CLI spec (``jpeg75``, ``blur:sigma=2``), loaded; ``none`` gives None."""
        from guardkit.specs import parse_spec

        if spec == "none":
            return None
        name, options = parse_spec(spec, self.registry.names("purifier"))
        return self.load_part("purifier", name, run, **options)

    def check(self, method: str, *, face_model: str | None = None, encoder: str | None = None,
              face_finder: str | None = None, losses: Mapping[str, float] | None = None) -> dict[str, PartSpec]:
        """Resolve names and check capabilities before any weight is loaded."""
        specs = {"method": self.registry.get("method", method)}
        needs = set(specs["method"].capabilities.get("needs", ()))
        grads = bool(specs["method"].capabilities.get("needs_gradients", False))
        chosen = {"face_model": face_model, "encoder": encoder}
        for kind in ("face_model", "encoder"):
            if kind in needs and chosen[kind] is None:
                raise CapabilityError(f"method {method!r} needs a {kind.replace('_', ' ')}; none was given")
            if chosen[kind] is not None:
                specs[kind] = self.registry.get(kind, chosen[kind])
                if grads and not specs[kind].capabilities.get("differentiable", False):
                    raise CapabilityError(
                        f"method {method!r} needs gradients, but {kind.replace('_', ' ')} {chosen[kind]!r} "
                        f"has none (it can score results, not drive an attack)")
        if "face_model" in specs:
            if face_finder is None:
                raise CapabilityError(f"method {method!r} needs a face finder; none was given")
            specs["face_finder"] = finder = self.registry.get("face_finder", face_finder)
            scheme = finder.capabilities.get("scheme")
            accepted = specs["face_model"].capabilities.get("schemes", ())
            if scheme not in accepted:
                raise CapabilityError(
                    f"face finder {face_finder!r} gives {scheme} landmarks; face model {face_model!r} "
                    f"aligns from {', '.join(accepted) or 'none'}")
        for name in (losses or {}):
            loss = self.registry.get("loss", name)
            missing = set(loss.capabilities.get("needs", ())) - set(specs)
            if missing:
                raise CapabilityError(f"loss {name!r} needs {', '.join(sorted(missing))}, which method "
                                      f"{method!r} was not given")
        return specs

    def build_method(self, method: str, run: RunConfig, *, face_model: str | None = DEFAULT_FACE_MODEL,
                     encoder: str | None = None, face_finder: str | None = DEFAULT_FACE_FINDER,
                     losses: Mapping[str, float] | None = None, options: Mapping[str, Any] | None = None,
                     part_options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Any, Any, Any]:
        """Check, then construct and load the parts. Returns ``(method, face_model, face_finder)``.

        ``part_options`` maps a kind ("encoder", "face_model", "face_finder") to its part's options
        (e.g. ``{"encoder": {"path": "/weights/sd-vae"}}``). A method that needs an encoder and is
        given none gets ``sd-vae``."""
        method_spec = self.registry.get("method", method)
        needs = set(method_spec.capabilities.get("needs", ()))
        face_model = face_model if "face_model" in needs else None
        encoder = (encoder or DEFAULT_ENCODER) if "encoder" in needs else None
        loss_weights = dict(losses) if losses else dict(getattr(method_spec.factory, "default_losses", {}))
        specs = self.check(method, face_model=face_model, encoder=encoder,
                           face_finder=face_finder if face_model else None, losses=loss_weights)
        parts = {}
        for kind in ("face_model", "encoder", "face_finder"):
            if kind in specs:
                parts[kind] = specs[kind].factory(run, **dict((part_options or {}).get(kind, {})))
                parts[kind].load()
        built_losses = [WeightedLoss(w, self.registry.get("loss", name).factory(), name)
                        for name, w in loss_weights.items()]
        kwargs = {k: v for k, v in parts.items() if k != "face_finder"}
        instance = method_spec.factory(run, losses=built_losses, **kwargs, **dict(options or {}))
        return instance, parts.get("face_model"), parts.get("face_finder")

    # ----------------------------------------------------------------------------- files
    def protect(
        self,
        inputs: Sequence[str | Path],
        *,
        method: str = DEFAULT_METHOD,
        face_model: str | None = DEFAULT_FACE_MODEL,
        face_finder: str = DEFAULT_FACE_FINDER,
        encoder: str | None = None,
        run: RunConfig | None = None,
        losses: Mapping[str, float] | None = None,
        options: Mapping[str, Any] | None = None,
        part_options: Mapping[str, Mapping[str, Any]] | None = None,
        output_dir: str | Path | None = None,
        fmt: str = "png",
        resume: bool = True,
        on_photo: Callable[[PhotoResult], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> ProtectResult:
        """Protect photo files (or folders of them).

        With ``output_dir``, each protected photo is written as soon as it is done (atomically, never
        over an input, metadata stripped) and photos already done there are skipped (``resume``);
        without, they are kept in memory for ``ProtectResult.save``. A photo that fails (unreadable,
        no face, ...) is reported in its ``PhotoResult`` and the others go on. ``on_step(step, steps)``
        follows the optimisation of the current batch (progress bars).
        """
        import torch

        from guardkit.attack import project, reporting_steps

        run = run or RunConfig()
        paths = collect_inputs([Path(p) for p in inputs])
        if not paths:
            raise ImageError(f"no photos found in {', '.join(str(p) for p in inputs)} "
                             f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        plan = plan_outputs(paths, Path(output_dir), fmt) if output_dir is not None else {}
        protector, model, finder = self.build_method(method, run, face_model=face_model, encoder=encoder,
                                                     face_finder=face_finder, losses=losses, options=options,
                                                     part_options=part_options)
        if run.threads:
            torch.set_num_threads(run.threads)
        device = run.torch_device()
        results: list[PhotoResult] = []
        if on_start:
            on_start(len(paths))

        def finish(result: PhotoResult) -> None:
            results.append(result)
            if on_photo:
                on_photo(result)

        def loaded() -> Iterable[tuple[Path, np.ndarray, list[Face]]]:  # streamed: one photo in memory at a time
            for path in paths:
                if path in plan and resume and is_done(plan[path]):
                    finish(PhotoResult(path, "skipped", output=plan[path]))
                    continue
                try:
                    image = load_rgb(path)
                    faces = finder.find(image) if finder is not None else []
                    if finder is not None and not faces:
                        raise NoFaceError(f"{path}: no face found")
                except GuardkitError as exc:
                    finish(PhotoResult(path, "failed", error=str(exc)))
                    continue
                yield path, image, faces

        for batch in _batches_of_same_size(loaded(), run.batch_size):
            started = time.perf_counter()
            clean = torch.from_numpy(np.stack([img for _, img, _ in batch])).to(device)
            clean = clean.permute(0, 3, 1, 2).float().div(255)
            faces = [f.with_index(i) for i, (_, _, fs) in enumerate(batch) for f in fs]
            try:
                with torch.autocast(device.type, dtype=run.torch_dtype(), enabled=run.dtype != "float32"), \
                        reporting_steps(on_step):
                    adv = protector.protect(clean, faces, run.budget)
                adv = project(adv.detach().float(), clean, run.budget)  # never trust a method
                if not torch.isfinite(adv).all():
                    raise GuardkitError("the protection produced non-finite pixels")
                adv8 = torch.round(adv * 255).clamp(0, 255).to(torch.uint8)
                distances = _face_distances(model, clean, adv8.float() / 255, faces)
            except (GuardkitError, RuntimeError, ValueError) as exc:
                for path, _, _ in batch:
                    finish(PhotoResult(path, "failed", error=f"{path}: {exc}"))
                continue
            seconds = (time.perf_counter() - started) / len(batch)
            for i, (path, image, fs) in enumerate(batch):
                protected = adv8[i].permute(1, 2, 0).cpu().numpy()
                result = PhotoResult(path, "protected", faces=len(fs), seconds=seconds,
                                     linf=float(np.abs(protected.astype(np.int16) - image).max()) / 255,
                                     psnr=psnr(image, protected),
                                     fr_distance=min((d for d, f in zip(distances, faces) if f.image_index == i),
                                                     default=math.nan))
                if path in plan:
                    try:
                        save_image(protected, plan[path], fmt=fmt)
                        result.output = plan[path]
                    except ImageError as exc:
                        result.status, result.error = "failed", str(exc)
                else:
                    result.protected = protected
                finish(result)
        order = {p: i for i, p in enumerate(paths)}
        results.sort(key=lambda r: order[r.source])
        threshold = model.threshold if model is not None else math.nan
        return ProtectResult(results, face_model=face_model or "", threshold=threshold)


def _batches_of_same_size(items: Iterable, size: int) -> Iterable[list]:
    """Consecutive groups of at most ``size`` photos that share one shape (so they stack)."""
    groups: dict[tuple, list] = {}
    for item in items:
        group = groups.setdefault(item[1].shape, [])
        group.append(item)
        if len(group) == size:
            yield groups.pop(item[1].shape)
    yield from (g for g in groups.values() if g)


def _face_distances(model, clean, adv, faces: Sequence[Face]) -> list[float]:
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
