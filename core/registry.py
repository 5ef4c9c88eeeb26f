"""The plugin manager and the part registry, built fresh for every run (no module-level state)."""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import pluggy

from guardkit import hookspecs
from guardkit.errors import DuplicatePartError, RegistryError, UnknownPartError, first_line
from guardkit.hookspecs import KINDS
from guardkit.specs import Shorthand
from guardkit.types import PartSpec
from guardkit.weights import KnownWeight

DISABLE_ENV = "GUARDKIT_DISABLE_PLUGINS"
ENTRY_POINT_GROUP = "guardkit"

#: Class attributes a part may declare; copied into ``PartSpec.capabilities`` for checks and listings.
CAPABILITY_ATTRS = (
    "differentiable", "metric", "threshold", "input_size", "schemes", "scheme",
    "needs", "needs_gradients", "maximize", "latent_channels", "downsample", "higher_is_better",
    "default_finder", "accepts_ensemble",
    # editor <-> edit method (guardkit.contracts): what an editor provides, what an edit method needs from one;
    # needs_parts: the part builds further parts by name, so the engine hands it its ``Parts``
    "provides", "needs_editor", "needs_parts",
    "shorthand",  # guardkit.specs.Shorthand: ``jpeg75`` -> jpeg with quality=75
)


class Register(Protocol):
    """``register(name, factory, summary=..., weights=(KnownWeight(...), ...))``: ``weights`` are the
    sources the part can load, listed (found, verified, how to get them) by ``guardkit models``."""

    def __call__(self, name: str, factory: Any, *, summary: str = "",
                 weights: Sequence[KnownWeight] = ()) -> None: ...


@dataclass(frozen=True)
class PluginError:
    """A plugin that failed to import or to register; every other plugin keeps working."""

    distribution: str
    entry_point: str
    error: BaseException

    def __str__(self) -> str:
        return (f"plugin {self.entry_point!r} from distribution {self.distribution!r} failed to load: "
                f"{type(self.error).__name__}: {first_line(self.error)}")


def disabled_from_env() -> set[str]:
    """Plugin names listed (comma-separated) in ``$GUARDKIT_DISABLE_PLUGINS``."""
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def make_plugin_manager(
    *, entry_points: bool = True, plugins: Iterable[object] = (), blocked: Iterable[str] = ()
) -> tuple[pluggy.PluginManager, list[PluginError]]:
    """A new plugin manager with the ``guardkit`` entry points loaded one by one, each guarded.

    ``blocked`` names plugins to skip (the entry-point name, or ``dist:name``), like pytest's
    ``-p no:NAME``; ``$GUARDKIT_DISABLE_PLUGINS`` adds to it.
    """
    pm = pluggy.PluginManager("guardkit")
    pm.add_hookspecs(hookspecs)
    blocked = set(blocked) | disabled_from_env()
    errors: list[PluginError] = []
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            origin = f"{dist}:{ep.name}"
            if ep.name in blocked or origin in blocked:
                continue
            try:
                pm.register(ep.load(), name=origin)
            except Exception as exc:  # one broken plugin never stops the others
                errors.append(PluginError(dist, ep.name, exc))
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm, errors


class Registry:
    """One table per kind: ``name -> PartSpec``. Duplicates and unknown names are errors."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, PartSpec]] = {kind: {} for kind in KINDS}

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager, errors: list[PluginError] | None = None) -> "Registry":
        """Call every plugin's register hooks; a plugin whose hook raises is added to ``errors``."""
        registry = cls()
        for kind, hook_name in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                origin = pm.get_name(impl.plugin) or repr(impl.plugin)
                try:
                    impl.function(register=registry.register_callback(kind, origin))
                except RegistryError:
                    raise
                except Exception as exc:
                    if errors is None:
                        raise
                    dist, _, ep = origin.partition(":")
                    errors.append(PluginError(dist, ep or origin, exc))
        return registry

    def register_callback(self, kind: str, origin: str) -> Callable[..., None]:
        def register(name: str, factory: Any, *, summary: str = "", weights: Sequence[KnownWeight] = ()) -> None:
            weights = tuple(weights)
            bad = [w for w in weights if not isinstance(w, KnownWeight)]
            if bad:
                raise TypeError(f"{kind} {name!r}: weights must be guardkit.weights.KnownWeight, got {bad[0]!r}")
            capabilities = capabilities_of(factory)
            if "shorthand" in capabilities:
                capabilities["shorthand"] = checked_shorthand(f"{kind} {name!r}", capabilities["shorthand"])
            self.add(PartSpec(kind, name, factory, summary, origin, capabilities, weights))

        return register

    def add(self, spec: PartSpec) -> None:
        table = self._tables[spec.kind]
        if spec.name in table:
            raise DuplicatePartError(spec.kind.replace("_", " "), spec.name, table[spec.name].origin, spec.origin)
        table[spec.name] = spec

    def get(self, kind: str, name: str) -> PartSpec:
        table = self._tables[kind]
        if name not in table:
            raise UnknownPartError(kind.replace("_", " "), name, list(table))
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._tables[kind])

    def shorthands(self, kind: str) -> dict[str, Shorthand]:
        """name -> ``Shorthand`` for the parts of ``kind`` that declare one (``jpeg75``, see guardkit.specs)."""
        return {name: spec.capabilities["shorthand"]
                for name, spec in self._tables[kind].items() if "shorthand" in spec.capabilities}

    def specs(self) -> list[PartSpec]:
        return [spec for kind in KINDS for _, spec in sorted(self._tables[kind].items())]


def capabilities_of(factory: Any) -> dict[str, Any]:
    caps = {}
    for attr in CAPABILITY_ATTRS:
        if hasattr(factory, attr):
            value = getattr(factory, attr)
            caps[attr] = sorted(value) if isinstance(value, (frozenset, set)) else value
    return caps


def checked_shorthand(what: str, value: Any) -> Shorthand:
    """A part's ``shorthand`` attribute as a ``Shorthand`` (a plain ``(option, divisor)`` tuple is fine)."""
    try:
        shorthand = Shorthand(*value)
    except TypeError:
        raise TypeError(f"{what}: shorthand must be Shorthand(option, divisor), got {value!r}") from None
    if not isinstance(shorthand.option, str) or isinstance(shorthand.divisor, bool) \
            or not isinstance(shorthand.divisor, (int, float)) or not shorthand.divisor > 0:
        raise TypeError(f"{what}: shorthand must be Shorthand(option, divisor > 0), got {value!r}")
    return shorthand
