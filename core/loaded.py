"""``PartCache``: loaded parts kept for every later call of one engine (service workers, Ray actors).

```python
engine = Engine(part_cache=PartCache())   # or loaded_engine()
engine.protect([...]); engine.protect([...])   # the second call loads no weights
```
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from guardkit.config import RunConfig
from guardkit.engine import Engine
from guardkit.errors import GuardkitError


class PartCache:
    """Loaded parts by what they are built from, handed to ``Engine(part_cache=...)``.

    ``Engine.protect`` builds its parts on every call (right for a CLI run, wasteful for a service), so an
    engine with a cache asks it first (``Engine.load_part``, the one place parts are loaded). A part is keyed
    by kind, name, device, dtype, weights folder and options, not by the budget and seed (which parts never
    read: the method reads them, and the method itself is rebuilt per call, which is cheap). A part that
    failed to load with a ``GuardkitError`` (missing weights) keeps failing without retrying. Not
    thread-safe: one cache belongs to one worker thread."""

    def __init__(self) -> None:
        self.loads = 0  # parts actually built and loaded (tests check they load once)
        self._parts: dict[tuple, Any] = {}

    @staticmethod
    def key(kind: str, name: str, run: RunConfig, options: Mapping[str, Any]) -> tuple:
        return kind, name, run.device, run.dtype, run.weights_dir, tuple(sorted((k, repr(v)) for k, v in options.items()))

    def get(self, kind: str, name: str, run: RunConfig, options: Mapping[str, Any], build: Callable[[], Any]) -> Any:
        """The part kept for these arguments, else ``build()``'s (kept, as is a ``GuardkitError`` it raises)."""
        key = self.key(kind, name, run, options)
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


def loaded_engine(**kwargs: Any) -> Engine:
    """An ``Engine`` (``kwargs`` are its own) with a fresh ``PartCache``: its parts load once, then serve."""
    return Engine(part_cache=PartCache(), **kwargs)
