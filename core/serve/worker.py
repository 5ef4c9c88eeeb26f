"""The one adapter between the service and the Engine's API (each worker holds an Engine with a ``PartCache``).

Everything the service asks of guardkit goes through :func:`protect_photo` and :func:`verify_photo`, so
that a change of ``Engine.protect``'s parameters is adapted here and nowhere else. No protection logic
lives here: options are passed through, results are read back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from guardkit.config import RunConfig
from guardkit.engine import DEFAULT_METHOD, Engine
from guardkit.errors import GuardkitError
from guardkit.imageio import save_image
from guardkit.strength import stronger_strength

_MEDIA_TYPE = {"png": "image/png", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class ProtectOptions:
    """What a request may choose. ``None``: the method's (or the service's) default."""

    method: str | None = None
    strength: str | None = None
    eps: float | None = None
    steps: int | None = None
    face_models: tuple[str, ...] | None = None
    fmt: str = "png"
    seed: int = 0
    cloak: Any = None  # a checked guardkit.cloak.Cloak from the upload: put it on the photo, no optimisation
    cloak_face: str = "largest"


@dataclass
class Protected:
    """One protected photo, encoded without metadata, and the Engine's summary of it."""

    data: bytes
    media_type: str
    faces: int
    linf: float
    psnr: float
    distances: dict[str, float]
    thresholds: dict[str, float]
    method: str
    eps: float
    steps: int
    seconds: float
    stronger: tuple[str, float] | None = None  # (preset, its eps) when a face still matches: `guardkit run`'s note

    def matches(self) -> dict[str, bool | None]:
        """Per face model: is the protected face still within the model's threshold of the original (None: no distance)."""
        from guardkit.verify import is_match  # one rule for a match everywhere: distance below the threshold

        return {name: None if not math.isfinite(d) else is_match(d, self.thresholds.get(name, math.inf))
                for name, d in self.distances.items()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers as None), without the image."""
        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        matches = self.matches()
        models = {name: {"distance": finite(d), "threshold": self.thresholds.get(name), "match": matches[name]}
                  for name, d in self.distances.items()}
        return {"method": self.method, "eps": self.eps, "steps": self.steps, "faces": self.faces,
                "linf": self.linf, "linf_255": round(self.linf * 255), "psnr": finite(self.psnr),
                "face_models": models, "seconds": self.seconds, "media_type": self.media_type,
                "stronger": None if self.stronger is None else {"strength": self.stronger[0],
                                                                "eps_255": round(self.stronger[1] * 255)}}


class PhotoFailed(GuardkitError):
    """The Engine reported the photo as failed (no face, ...): the message is its one line."""


def protect_photo(engine: Engine, photo: Path, workdir: Path, options: ProtectOptions, *,
                  base: RunConfig = RunConfig(), on_step: Callable[[int, int], None] | None = None) -> Protected:
    """THE adapter to ``Engine.protect``: protect ``photo``, encode it (metadata stripped) via ``workdir``."""
    method = options.method or DEFAULT_METHOD
    models: dict[str, Any] = {"face_model": list(options.face_models)} if options.face_models else {}
    if options.cloak is not None:
        models = {"cloak": options.cloak, "cloak_face": options.cloak_face}
    # Engine.protect resolves strength, eps and steps as `guardkit run` does (one set of defaults)
    result = engine.protect([photo], method=method, run=replace(base, seed=options.seed), strength=options.strength,
                            eps=options.eps, steps=options.steps, on_step=on_step, fmt=options.fmt, **models)
    budget = result.budget
    (done,) = result.photos
    if done.status != "protected" or done.protected is None:
        raise PhotoFailed(done.error or f"the photo was {done.status}")
    out = workdir / f"protected.{'png' if options.fmt == 'png' else 'jpg'}"
    save_image(done.protected, out, fmt=options.fmt)
    protected = Protected(out.read_bytes(), _MEDIA_TYPE[options.fmt], done.faces, done.linf, done.psnr,
                          dict(done.distances), dict(result.thresholds), result.method or method, budget.eps,
                          budget.steps, done.seconds)
    if any(protected.matches().values()):
        stronger = stronger_strength(engine.registry.get("method", protected.method).factory, budget.eps)
        protected = replace(protected, stronger=None if stronger is None else (stronger[0], stronger[1].eps))
    return protected


@dataclass
class Verified:
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def verify_photo(engine: Engine, photo: Path, reference: Path, *, face_models: Sequence[str] | None,
                 purify: Sequence[str], crops: Sequence[str] | None = None, base: RunConfig = RunConfig()) -> Verified:
    """``guardkit.verify.verify`` (the same table as ``guardkit verify --json``)."""
    from guardkit.verify import CROPS, verify

    warnings: list[str] = []
    rows = verify(engine, photo, reference, face_models=face_models, purify=purify, run=base,
                  crops=CROPS if crops is None else crops, on_warning=warnings.append)
    return Verified([{"face_model": r.face_model, "crop": r.crop, "purify": r.purify,
                      "distance": None if math.isnan(r.distance) else r.distance,
                      "threshold": r.threshold, "metric": r.metric, "decision": r.decision} for r in rows], warnings)
