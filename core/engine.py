"""``Engine``: owns a fresh plugin manager and registry, checks parts, and runs protections on files.

```python
import guardkit
engine = guardkit.Engine()
result = engine.protect(["me.jpg"])              # fr-cloak against dlib, eps 4/255
result.save("protected/")
```
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from guardkit.config import Budget, RunConfig
from guardkit.ensemble import Member, finder_of, parse_models
from guardkit.errors import CapabilityError, NoFaceError
from guardkit.photo_loop import gather
from guardkit.protecting import PhotoResult, ProtectResult, protect_loop, protect_photos, psnr
from guardkit.registry import PluginError, Registry, make_plugin_manager
from guardkit.torch_settings import set_torch, torch_settings
from guardkit.types import Face, PartSpec, WeightedLoss

if TYPE_CHECKING:
    from guardkit.loaded import PartCache

DEFAULT_METHOD = "fr-cloak"
DEFAULT_FACE_MODELS = ("dlib", "facenet")  # two families: the default protects against both at once
DEFAULT_FACE_MODEL = DEFAULT_FACE_MODELS[0]
DEFAULT_ENCODER = "sd-vae"
DEFAULT_FACE_FINDER = "dlib"  # the faces a face model reads when it names no finder (``default_finder``) of its own
# The built-in choices of `guardkit edit`, `eval` and `verify` (core names no part anywhere else):
DEFAULT_EDITOR = "flux-edit"  # `guardkit edit`'s editor
DEFAULT_FACE_PARSER = "landmarks"  # the edit methods' face parser (regions drawn from landmarks: no weights)
DEFAULT_CLOAK_METHOD = "personal-cloak"  # places a cloak file whose kind names no other method
DEFAULT_CLOAK_FINDER = "mtcnn"  # places a personal cloak: five points with the mouth, 0.06 s a megapixel
DEFAULT_VERIFY_PURIFY = ("none", "jpeg90", "jpeg75", "jpeg60", "blur", "rotate", "resize")  # `guardkit verify`


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
            first = self.members[0].finder if self.members else next(iter(self.finders))
            if name == first and not found:
                raise NoFaceError(f"{source}: no face found")
            faces += found
        return faces


class EngineParts:
    """``guardkit.contracts.Parts`` backed by one engine: what a part that builds further parts is handed."""

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine

    def build(self, kind: str, name: str, run: RunConfig, **options: Any) -> Any:
        return self._engine.build_part(kind, name, run, **options)


class Engine:
    """A registry of parts built from the ``guardkit`` entry points (plus ``plugins`` given here).

    ``part_cache`` (a ``guardkit.loaded.PartCache``): loaded parts are kept there and reused by every later
    call instead of being built and loaded per call (the service's workers and Ray's actors). Every part the
    engine loads, for ``protect`` as for ``load_part``, goes through ``load_part``, the one place it is consulted."""

    def __init__(self, *, plugins: Iterable[object] = (), entry_points: bool = True,
                 disabled: Iterable[str] = (), part_cache: "PartCache | None" = None) -> None:
        self.pm, self.plugin_errors = make_plugin_manager(entry_points=entry_points, plugins=plugins,
                                                          blocked=disabled)
        self.registry = Registry.from_plugin_manager(self.pm, self.plugin_errors)
        self.part_cache = part_cache

    @property
    def errors(self) -> list[PluginError]:
        return self.plugin_errors

    # ----------------------------------------------------------------------------- parts
    @property
    def parts(self) -> "EngineParts":
        """The ``guardkit.contracts.Parts`` this engine hands the parts it builds: built from its own registry."""
        return EngineParts(self)

    def build_part(self, kind: str, name: str, run: RunConfig, **options: Any) -> Any:
        """The part ``name`` of ``kind`` built with ``options``, not loaded. A part that declares ``needs_parts``
        gets ``parts=self.parts``, so the parts it builds by name come from this registry (disabled plugins too)."""
        spec = self.registry.get(kind, name)
        if spec.capabilities.get("needs_parts", False):
            options = {"parts": self.parts, **options}
        return spec.factory(run, **options)

    def load_part(self, kind: str, name: str, run: RunConfig, **options: Any) -> Any:
        """The part ``name`` of ``kind`` built with ``options`` and loaded (weights on the run's device); with a
        ``part_cache``, the one it already holds for these arguments, else built, loaded and kept there."""
        def build() -> Any:
            part = self.build_part(kind, name, run, **options)
            part.load()
            return part

        return build() if self.part_cache is None else self.part_cache.get(kind, name, run, options, build)

    def check_editor(self, edit_method: str, editor: str) -> None:
        """Before any weight loads: editor ``editor`` provides what ``edit_method`` needs from an editor
        (``needs_editor`` vs ``provides``); a one-line ``CapabilityError`` otherwise."""
        from guardkit.contracts import check_editor

        needs = self.registry.get("edit_method", edit_method).capabilities.get("needs_editor", ())
        check_editor(edit_method, needs, editor, self.registry.get("editor", editor).capabilities.get("provides", ()))

    def load_purifier(self, spec: str, run: RunConfig) -> Any:
        """A purifier from a CLI spec (``jpeg75``, ``blur:sigma=2``), loaded; ``none`` gives None."""
        from guardkit.specs import parse_spec

        if spec == "none":
            return None
        name, options = parse_spec(spec, self.registry.names("purifier"),
                                   shorthands=self.registry.shorthands("purifier"))
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
            finder_name = face_finder or finder_of(model.factory, DEFAULT_FACE_FINDER)
            finder = self.registry.get("face_finder", finder_name)
            scheme = finder.capabilities.get("scheme")
            accepted = model.capabilities.get("schemes", ())
            if scheme not in accepted:
                raise CapabilityError(
                    f"face finder {finder_name!r} gives {scheme} landmarks; face model {name!r} "
                    f"aligns from {', '.join(accepted) or 'none'}")
            pairs.append((model, finder))
        if "face_finder" in needs and not pairs:  # a method that places, not optimises (personal-cloak)
            finder_name = face_finder or capabilities.get("default_finder")
            if not finder_name:
                raise CapabilityError(f"method {method!r} needs a face finder; none was given (--finder)")
            specs["face_finder"] = self.registry.get("face_finder", finder_name)
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
            kwargs["encoder"] = self._load(specs["encoder"], run, options_of["encoder"])
        finders: dict[str, Any] = {}
        members = []
        for i, (model_spec, finder_spec) in enumerate(specs.get("face_models", [])):
            if finder_spec.name not in finders:
                finders[finder_spec.name] = self._load(finder_spec, run, options_of["face_finder"])
            model = self._load(model_spec, run, options_of["face_model"] if i == 0 else {})
            members.append(Member(model_spec.name, model, finder_spec.name))
        if not members and "face_finder" in specs:
            finders[specs["face_finder"].name] = self._load(specs["face_finder"], run, options_of["face_finder"])
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

    def _load(self, spec: PartSpec, run: RunConfig, options: Mapping[str, Any]) -> Any:
        return self.load_part(spec.kind, spec.name, run, **dict(options))

    def resolve_strength(self, method: str, run: RunConfig | None, strength: str | None,
                         options: Mapping[str, Any] | None, *, eps: float | None = None, steps: int | None = None,
                         explicit_run: bool | None = None) -> tuple[RunConfig, dict[str, Any]]:
        """The run and method options a protection uses, the same for ``guardkit run`` and the Python API:
        ``strength``'s preset under explicit ``eps``, ``steps`` and ``options``. When no strength is named
        and the run's budget was not chosen (no ``run``, a run whose eps and steps are ``Budget()``'s, or
        ``explicit_run=False``), a method with presets runs its ``low`` preset and one without runs its own
        default step count; a chosen run's budget is kept. ``eps`` and ``steps`` always win."""
        from guardkit.strength import apply_strength, default_strength

        factory = self.registry.get("method", method).factory
        explicit = budget_chosen(run) if explicit_run is None else explicit_run
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
    @torch_settings()  # the run's threads hold for the call only: the caller's are put back
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
        eps: float | None = None,
        steps: int | None = None,
        losses: Mapping[str, float] | None = None,
        options: Mapping[str, Any] | None = None,
        part_options: Mapping[str, Mapping[str, Any]] | None = None,
        output_dir: str | Path | None = None,
        fmt: str = "png",
        resume: bool = True,
        on_photo: Callable[[PhotoResult], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        cloak: Any = None,
        refine: int = 0,
        cloak_face: str = "largest",
        others: str = "skip",
    ) -> ProtectResult:
        """Protect photo files (or folders of them), on the shared photo loop (``guardkit.photo_loop``).

        With ``output_dir``, each protected photo is written as soon as it is done (atomically, never
        over an input, metadata stripped) and photos already done there are skipped (``resume``);
        without, they are kept in memory for ``ProtectResult.save``. A photo that fails (unreadable,
        no face, ...) is reported in its ``PhotoResult`` in one line and the others go on.
        ``on_step(step, steps)`` follows the optimisation of the current batch (progress bars).

        The budget and options are ``resolve_strength``'s, as for ``guardkit run``: ``strength``
        (``low``/``mid``/``high`` for methods with presets, see ``guardkit methods show``) sets eps, steps
        and the method's options; ``eps``, ``steps`` and explicit ``options`` win. Without a strength and
        without a chosen budget in ``run``, a method with presets runs its ``low`` preset.

        ``cloak`` (a ``.cloak`` file from ``enroll``, or a ``guardkit.cloak.Cloak``) puts that person's cloak on
        the ``cloak_face`` face of each photo (``largest``, ``all`` or ``N``) at the cloak's budget, with no
        optimisation (``strength``, ``eps`` and ``steps`` are then the cloak's own); ``refine`` adds that many
        per-photo steps from the cloak; ``others``: ``skip`` leaves the
        other faces alone, ``protect`` protects them per photo (``guardkit.cloak_plan``).
        """
        if cloak is not None:
            from guardkit.cloak_plan import plan_cloak_run

            plan = plan_cloak_run(cloak, placer=DEFAULT_CLOAK_METHOD, optimiser=method,
                                  face_model=face_model, refine=refine, face=cloak_face, others=others, options=options)
            method, face_model, face_finder, options = plan.method, plan.face_model, face_finder or plan.face_finder, plan.options
            placing = plan.steps == 0  # placing alone: the cloak carries its own budget, a strength has no say
            strength = None if placing else (strength or plan.strength)
            eps, steps = plan.eps, plan.steps if plan.steps is not None else steps
        run, options = self.resolve_strength(method, run, strength, options, eps=eps, steps=steps)
        inputs_ = gather(inputs, output_dir=output_dir, fmt=fmt)
        loop = protect_loop(inputs_, fmt=fmt, resume=resume, on_start=on_start, on_photo=on_photo)
        if not inputs_.paths:  # only bad paths: check every name (a usage error still exits 2), name each, load nothing
            self._resolve(method, face_model, encoder, face_finder, losses)
            loop.start()
            return ProtectResult(loop.results, budget=run.budget, method=method)
        built = self.build_method(method, run, face_model=face_model, encoder=encoder, face_finder=face_finder,
                                  losses=losses, options=options, part_options=part_options)
        set_torch(threads=run.threads or None)
        result = protect_photos(loop, built, run, on_step)
        result.method = method
        return result

    def edit(self, inputs: Sequence[str | Path], *, prompt: str, **kwargs: Any) -> Any:
        """Edit photo files under ``prompt`` (with ``protect=``, privacy-preserving) on the shared photo loop:
        ``guardkit.editing.edit_photos``, whose keywords it takes. Returns a list of ``EditResult``."""
        from guardkit.editing import edit_photos

        return edit_photos(self, inputs, prompt=prompt, **kwargs)

    def evaluate(self, inputs: Sequence[str | Path], config: Any = None, out_dir: str | Path = "eval",
                 **kwargs: Any) -> Any:
        """Protect, purify, edit and score ``inputs`` (``guardkit.evaluate.evaluate``; ``config``: an
        ``EvalConfig``, default its defaults) into ``out_dir``. Returns an ``EvalResult``."""
        from guardkit.evaluate import EvalConfig, evaluate

        return evaluate(self, inputs, config if config is not None else EvalConfig(), out_dir, **kwargs)

    @torch_settings()
    def enroll(self, photos: Sequence[str | Path], *, output: str | Path | None = None,
               face_model: str | Sequence[str] | None = None, strength: str | None = None, finder: str | None = None,
               steps: int | None = None, variants: int | None = None, run: RunConfig | None = None,
               resume: bool = True, on_photo: Callable[[Path, str], None] | None = None,
               on_step: Callable[[int, int], None] | None = None) -> Any:
        """Learn one person's cloak from ``photos`` (3-10 of them, or folders) against ``face_model`` (default:
        the ensemble) and write it to ``output`` (``guardkit.enrolment``); ``protect(..., cloak=output)`` then
        puts it on new photos of that person. ``strength``: low, mid (default) or high. Returns an
        ``EnrollResult`` (the cloak, the photos used and those that could not be)."""
        from guardkit.enrolment import DEFAULT_CLOAK_STRENGTH, enroll_photos, enroll_settings

        run = run or RunConfig()
        set_torch(threads=run.threads or None)
        settings = enroll_settings(strength, steps=steps, variants=variants, seed=run.seed)
        return enroll_photos(self, photos, output=output, face_models=parse_models(face_model) or DEFAULT_FACE_MODELS,
                             finder=finder or DEFAULT_CLOAK_FINDER, settings=settings,
                             strength=strength or DEFAULT_CLOAK_STRENGTH, run=run, resume=resume,
                             on_photo=on_photo, on_step=on_step)


def budget_chosen(run: RunConfig | None) -> bool:
    """Whether ``run``'s budget was chosen by its caller: its eps or steps differ from ``Budget()``'s. A run
    given only for its seed, device or threads then gets the method's defaults, as ``guardkit run`` does."""
    default = Budget()
    return run is not None and (run.budget.eps, run.budget.steps) != (default.eps, default.steps)


__all__ = ["BuiltMethod", "Engine", "PhotoResult", "ProtectResult", "budget_chosen", "psnr"]
