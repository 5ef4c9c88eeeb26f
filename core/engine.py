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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from guardkit.config import RunConfig
from guardkit.ensemble import Member, finder_of, parse_models
from guardkit.errors import CapabilityError, GuardkitError, ImageError, NoFaceError
from guardkit.imageio import IMAGE_SUFFIXES, animated_frames, collect_inputs, is_done, load_rgb, plan_outputs, save_image
from guardkit.registry import PluginError, Registry, make_plugin_manager
from guardkit.types import Face, PartSpec, WeightedLoss

DEFAULT_METHOD = "fr-cloak"
DEFAULT_FACE_MODELS = ("dlib", "facenet")  # two families: the default protects against both at once
DEFAULT_FACE_MODEL = DEFAULT_FACE_MODELS[0]
DEFAULT_ENCODER = "sd-vae"


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
    """``face_model``/``threshold``: the first face model's; ``thresholds``: every attacked model's."""

    photos: list[PhotoResult]
    face_model: str = ""
    threshold: float = math.nan
    thresholds: dict[str, float] = field(default_factory=dict)

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


@dataclass
class BuiltMethod:
    """A method with its loaded parts: the face models (``members``, in order) and their face finders
    by name (each finder runs once per photo however many models read its faces)."""

    method: Any
    members: list[Member]
    finders: dict[str, Any]

    @property
    def face_model(self) -> Any:
        return self.members[0].model if self.members else None

    def find_faces(self, image: np.ndarray, source: Path | str) -> list[Face]:
        """Every finder's faces, tagged with the finder's name; a photo where the first model's finder
        finds no face fails (``NoFaceError``)."""
        faces: list[Face] = []
        for name, finder in self.finders.items():
            found = [replace(f, finder=name) for f in finder.find(image)]
            if name == self.members[0].finder and not found:
                raise NoFaceError(f"{source}: no face found")
            faces += found
        return faces


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

    def check(self, method: str, *, face_model: str | Sequence[str] | None = None, encoder: str | None = None,
              face_finder: str | None = None, losses: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Resolve names and check capabilities before any weight is loaded.

        ``face_model``: one name or several (an ensemble, for methods that accept one). Each face model
        reads the faces of ``face_finder`` when one is given, else of its own ``default_finder``.
        Returns the specs by kind; ``"face_models"`` is a list of ``(model spec, finder spec)``."""
        specs: dict[str, Any] = {"method": self.registry.get("method", method)}
        capabilities = specs["method"].capabilities
        needs = set(capabilities.get("needs", ()))
        grads = bool(capabilities.get("needs_gradients", False))
        models = parse_models(face_model)
        if "face_model" in needs and not models:
            raise CapabilityError(f"method {method!r} needs a face model; none was given")
        if len(models) > 1 and not capabilities.get("accepts_ensemble", False):
            raise CapabilityError(f"method {method!r} takes one face model, got {len(models)} ({', '.join(models)})")
        if "encoder" in needs and encoder is None:
            raise CapabilityError(f"method {method!r} needs an encoder; none was given")
        if encoder is not None:
            specs["encoder"] = self._part_for_method("encoder", encoder, method, grads)
        pairs = []
        for name in models:
            model = self._part_for_method("face_model", name, method, grads)
            finder_name = face_finder or finder_of(model.factory)
            finder = self.registry.get("face_finder", finder_name)
            scheme = finder.capabilities.get("scheme")
            accepted = model.capabilities.get("schemes", ())
            if scheme not in accepted:
                raise CapabilityError(
                    f"face finder {finder_name!r} gives {scheme} landmarks; face model {name!r} "
                    f"aligns from {', '.join(accepted) or 'none'}")
            pairs.append((model, finder))
        if pairs:
            specs["face_models"] = pairs
            specs["face_model"], specs["face_finder"] = pairs[0]
        for name in (losses or {}):
            loss = self.registry.get("loss", name)
            missing = set(loss.capabilities.get("needs", ())) - set(specs)
            if missing:
                raise CapabilityError(f"loss {name!r} needs {', '.join(sorted(missing))}, which method "
                                      f"{method!r} was not given")
        return specs

    def _part_for_method(self, kind: str, name: str, method: str, gradients: bool) -> PartSpec:
        spec = self.registry.get(kind, name)
        if gradients and not spec.capabilities.get("differentiable", False):
            raise CapabilityError(
                f"method {method!r} needs gradients, but {kind.replace('_', ' ')} {name!r} "
                f"has none (it can score results, not drive an attack)")
        return spec

    def build_method(self, method: str, run: RunConfig, *, face_model: str | Sequence[str] | None = None,
                     encoder: str | None = None, face_finder: str | None = None,
                     losses: Mapping[str, float] | None = None, options: Mapping[str, Any] | None = None,
                     part_options: Mapping[str, Mapping[str, Any]] | None = None) -> "BuiltMethod":
        """Check, then construct and load the parts.

        ``face_model`` None: the method's default (``DEFAULT_FACE_MODELS`` for a method that takes an
        ensemble, else ``DEFAULT_FACE_MODEL``). ``part_options`` maps a kind ("encoder", "face_model", "face_finder") to its part's options
        (e.g. ``{"encoder": {"path": "/weights/sd-vae"}}``); face-model options apply to the first face
        model only (a weight file names one model). A method that needs an encoder and is given none gets
        ``sd-vae``. Methods that accept an ensemble get every face model as ``face_models``; the others
        get their one ``face_model``."""
        method_spec = self.registry.get("method", method)
        face_model, encoder, loss_weights, specs = self._resolve(method, face_model, encoder, face_finder, losses)
        options_of = {kind: dict((part_options or {}).get(kind, {})) for kind in ("encoder", "face_model", "face_finder")}
        kwargs: dict[str, Any] = {}
        if "encoder" in specs:
            kwargs["encoder"] = self._build(specs["encoder"], run, options_of["encoder"])
        finders: dict[str, Any] = {}
        members = []
        for i, (model_spec, finder_spec) in enumerate(specs.get("face_models", [])):
            if finder_spec.name not in finders:
                finders[finder_spec.name] = self._build(finder_spec, run, options_of["face_finder"])
            model = self._build(model_spec, run, options_of["face_model"] if i == 0 else {})
            members.append(Member(model_spec.name, model, finder_spec.name))
        if members:
            if method_spec.capabilities.get("accepts_ensemble", False):
                kwargs["face_models"] = members
            else:
                kwargs["face_model"] = members[0].model
        built_losses = [WeightedLoss(w, self._build_loss(name, run, part_options), name)
                        for name, w in loss_weights.items()]
        instance = method_spec.factory(run, losses=built_losses, **kwargs, **dict(options or {}))
        return BuiltMethod(instance, members, finders)

    def _resolve(self, method: str, face_model: str | Sequence[str] | None, encoder: str | None,
                 face_finder: str | None, losses: Mapping[str, float] | None) -> tuple[Any, Any, dict, dict]:
        """``build_method``'s defaults and checks, before any weight is loaded: (face models, encoder, loss
        weights, specs). ``face_model`` None: the method's default (the ensemble, or its first model)."""
        method_spec = self.registry.get("method", method)
        needs = set(method_spec.capabilities.get("needs", ()))
        ensemble = bool(method_spec.capabilities.get("accepts_ensemble", False))
        if face_model is None:
            face_model = DEFAULT_FACE_MODELS if ensemble else DEFAULT_FACE_MODEL
        face_model = face_model if "face_model" in needs else None
        encoder = (encoder or DEFAULT_ENCODER) if "encoder" in needs else None
        loss_weights = dict(losses) if losses else dict(getattr(method_spec.factory, "default_losses", {}))
        specs = self.check(method, face_model=face_model, encoder=encoder, face_finder=face_finder,
                           losses=loss_weights)
        return face_model, encoder, loss_weights, specs

    def _build_loss(self, name: str, run: RunConfig, part_options: Mapping[str, Any] | None) -> Any:
        """The loss ``name`` built as every part is, ``factory(run, **options)``, with its options from
        ``part_options["loss"][name]`` (``--loss lpips:net=vgg=1``). A factory that takes no argument at
        all (the earlier ``factory()`` contract) is still called so, and refuses options in one line."""
        import inspect

        from guardkit.errors import ConfigError

        options = dict(((part_options or {}).get("loss") or {}).get(name) or {})
        factory = self.registry.get("loss", name).factory
        try:
            bare = not inspect.signature(factory).parameters
        except (TypeError, ValueError):  # a builtin or C callable: assume the current contract
            bare = False
        if bare and options:
            raise ConfigError(f"loss {name!r} takes no options, got {', '.join(sorted(options))}")
        return factory() if bare else factory(run, **options)

    @staticmethod
    def _build(spec: PartSpec, run: RunConfig, options: Mapping[str, Any]) -> Any:
        part = spec.factory(run, **dict(options))
        part.load()
        return part

    def resolve_strength(self, method: str, run: RunConfig | None, strength: str | None,
                         options: Mapping[str, Any] | None, *, eps: float | None = None, steps: int | None = None,
                         explicit_run: bool | None = None) -> tuple[RunConfig, dict[str, Any]]:
        """The run and method options a protection uses: ``strength``'s preset under explicit ``eps``,
        ``steps`` and ``options``. When no strength is named and the run's budget was not chosen by the
        caller (no ``run``, or ``explicit_run=False`` as from the CLI), a method with presets runs its
        ``low`` preset and one without runs its own default step count; a chosen run's budget is kept."""
        from guardkit.strength import apply_strength, default_strength

        factory = self.registry.get("method", method).factory
        explicit = run is not None if explicit_run is None else explicit_run
        base = run or RunConfig()
        if strength is None and not explicit:
            strength = default_strength(factory)
        if strength is not None:
            budget, merged = apply_strength(factory, strength, base.budget, options, eps=eps, steps=steps)
            return replace(base, budget=budget), merged
        if not explicit:
            base = base.with_budget(steps=getattr(factory, "default_steps", base.budget.steps))
        changes = {k: v for k, v in (("eps", eps), ("steps", steps)) if v is not None}
        return (base.with_budget(**changes) if changes else base), dict(options or {})

    # ----------------------------------------------------------------------------- files
    def protect(
        self,
        inputs: Sequence[str | Path],
        *,
        method: str = DEFAULT_METHOD,
        face_model: str | Sequence[str] | None = None,
        face_finder: str | None = None,
        encoder: str | None = None,
        run: RunConfig | None = None,
        strength: str | None = None,
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

        ``strength`` (``low``/``mid``/``high`` for methods with presets, see ``guardkit methods show``)
        sets the budget's eps and steps and the method's options; explicit ``options`` win. Without it
        (and without ``run``), a method with presets runs its ``low`` preset, as ``guardkit run`` does.
        """
        import torch

        from guardkit.attack import project, reporting_steps

        run, options = self.resolve_strength(method, run, strength, options)
        bad: list[tuple[Path, str]] = []  # a missing path, a broken link, ...: failed photos, never a stop
        paths = collect_inputs([Path(p) for p in inputs], bad)
        if not paths and not bad:
            raise ImageError(f"no photos found in {', '.join(str(p) for p in inputs)} "
                             f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        plan = plan_outputs(paths, Path(output_dir), fmt) if output_dir is not None else {}
        if not paths:  # only bad paths: check every name (a usage error still exits 2), name each, load nothing
            self._resolve(method, face_model, encoder, face_finder, losses)
            failed = [PhotoResult(path, "failed", error=message) for path, message in bad]
            if on_start:
                on_start(len(failed))
            for photo in failed:
                if on_photo:
                    on_photo(photo)
            return ProtectResult(failed)
        built = self.build_method(method, run, face_model=face_model, encoder=encoder, face_finder=face_finder,
                                  losses=losses, options=options, part_options=part_options)
        protector, members = built.method, built.members
        if run.threads:
            torch.set_num_threads(run.threads)
        device = run.torch_device()
        results: list[PhotoResult] = []
        if on_start:
            on_start(len(paths) + len(bad))

        def finish(result: PhotoResult) -> None:
            results.append(result)
            if on_photo:
                on_photo(result)

        for path, message in bad:
            finish(PhotoResult(path, "failed", error=message))
        notes: dict[Path, str] = {}

        def loaded() -> Iterable[tuple[Path, np.ndarray, list[Face]]]:  # streamed: one photo in memory at a time
            for path in paths:
                if path in plan and resume and is_done(plan[path]):
                    finish(PhotoResult(path, "skipped", output=plan[path]))
                    continue
                try:
                    image = load_rgb(path)
                    frames = animated_frames(path)
                    if frames > 1:
                        notes[path] = (f"{path}: animated image ({frames} frames): protected its first frame only, "
                                       "written as a still image")
                    faces = built.find_faces(image, path) if members else []
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
                distances = {m.name: _face_distances(m.model, clean, adv8.float() / 255, m.faces(faces))
                             for m in members}
            except (GuardkitError, RuntimeError, ValueError) as exc:
                for path, _, _ in batch:
                    finish(PhotoResult(path, "failed", error=f"{path}: {exc}"))
                continue
            seconds = (time.perf_counter() - started) / len(batch)
            for i, (path, image, fs) in enumerate(batch):
                protected = adv8[i].permute(1, 2, 0).cpu().numpy()
                smallest = {m.name: min((d for d, f in zip(distances[m.name], m.faces(faces)) if f.image_index == i),
                                        default=math.nan) for m in members}
                counted = members[0].faces(fs) if members else fs
                result = PhotoResult(path, "protected", faces=len(counted), seconds=seconds, note=notes.get(path, ""),
                                     linf=float(np.abs(protected.astype(np.int16) - image).max()) / 255,
                                     psnr=psnr(image, protected), distances=smallest,
                                     fr_distance=smallest[members[0].name] if members else math.nan)
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
        results.sort(key=lambda r: order.get(r.source, -1))  # bad paths first, then the photos in order
        thresholds = {m.name: float(m.model.threshold) for m in members}
        return ProtectResult(results, face_model=members[0].name if members else "",
                             threshold=thresholds[members[0].name] if members else math.nan, thresholds=thresholds)


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
