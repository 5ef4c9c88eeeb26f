"""``LoadedEngine``: an Engine whose parts load once and serve every later call (service workers, Ray actors)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from guardkit.config import RunConfig
from guardkit.engine import Engine
from guardkit.errors import GuardkitError


class LoadedEngine(Engine):
    """An Engine whose parts are built and loaded once, then reused by every later request.

    ``Engine.protect`` builds its parts on every call (right for a CLI run, wasteful for a service), so
    this keeps each loaded part, keyed by what it is built from except the budget and seed (which parts
    never read: the method reads them, and the method itself is rebuilt per request, which is cheap).
    One instance belongs to one worker thread; it is not shared."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loads = 0  # parts actually built and loaded (tests check they load once)
        self._parts: dict[tuple, Any] = {}

    def _key(self, kind: str, name: str, run: RunConfig, options: Mapping[str, Any]) -> tuple:
        return kind, name, run.device, run.dtype, run.weights_dir, tuple(sorted((k, repr(v)) for k, v in options.items()))

    def _cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        if key not in self._parts:
            try:
                self._parts[key] = build()
            except GuardkitError as exc:  # missing weights stay missing: don't retry on every request
                self._parts[key] = exc
            self.loads += 1
        part = self._parts[key]
        if isinstance(part, GuardkitError):
            raise part
        return part

    def _build(self, spec, run: RunConfig, options: Mapping[str, Any]) -> Any:  # type: ignore[override]
        return self._cached(self._key(spec.kind, spec.name, run, options),
                            lambda: Engine._build(spec, run, options))

    def load_part(self, kind: str, name: str, run: RunConfig, **options: Any) -> Any:
        return self._cached(self._key(kind, name, run, options),
                            lambda: super(LoadedEngine, self).load_part(kind, name, run, **options))
