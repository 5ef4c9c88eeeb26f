"""The metric columns of ``guardkit eval``: which metrics run, under which labels, against which face models.

Core names no metric: a metric says what it does through class attributes (its capabilities):

* ``scores_faces``: it scores faces with a face model; it gets one column per face model of the run
  (``fr@dlib``), with the options ``face_model`` (the loaded model), ``model`` (its name), ``redetect``
  and, where the run's face finder gives landmarks the model reads, ``face_finder``;
* ``scores_at_far``: it also takes ``far`` (a false-accept rate); it gets a column per rate of the run
  (``asr@dlib FAR 0.01``), said unavailable once per model where the model has no thresholds at those rates;
* ``scores_impersonation``: it also takes ``target`` (a photo of another person); with a target identity it
  gets ``<name>-impersonation`` columns too.

A face model's column says whether every protection of the run attacked that model, or which did not
(``held-out``): only then does a column predict face recognition the protection never saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from guardkit.config import RunConfig
from guardkit.errors import GuardkitError
from guardkit.types import Face

if TYPE_CHECKING:
    from guardkit.evaluate import EvalConfig


def attacked_models(engine, config: "EvalConfig") -> dict[str, list[str]]:
    """method -> the face models its protection attacks: every ``config.ensemble`` model for methods that
    accept an ensemble and for edit methods, only ``ensemble[0]`` for methods that take one face model,
    none for methods that need no face model (encoder attacks) and for ``none``."""
    edit_methods = set(engine.registry.names("edit_method"))
    out: dict[str, list[str]] = {}
    for method in config.methods:
        if method == "none":
            out[method] = []
        elif method in edit_methods:
            out[method] = list(config.ensemble)
        else:
            capabilities = engine.registry.get("method", method).capabilities
            if "face_model" not in set(capabilities.get("needs", ())):
                out[method] = []
            else:
                ensemble = capabilities.get("accepts_ensemble", False)
                out[method] = list(config.ensemble if ensemble else config.ensemble[:1])
    return out


def held_out_note(model: str, attacked: dict[str, list[str]]) -> str:
    """The label suffix of a face model's columns: "" when every protection attacked it, " (held-out)" when
    none did, " (held-out for a, b)" naming the methods that did not (rows of several methods share a column)."""
    protections = [m for m in attacked if m != "none"]
    outside = [m for m in protections if model not in attacked[m]]
    if not outside:
        return ""
    return " (held-out)" if len(outside) == len(protections) else f" (held-out for {', '.join(outside)})"


def metric_variants(name: str, factory: Any, model_name: str | None, model: Any, finder: Any, config: "EvalConfig",
                    attacked: dict[str, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """(column label, metric options) for one metric and face model (None for a metric that scores no face):
    the face metrics with the alignment of ``config.fr_redetect``; a metric that ``scores_at_far`` also at
    each of ``config.fars``; one that ``scores_impersonation`` also against ``config.target_identity``."""
    if model_name is None:
        return [(name, {})]
    note = held_out_note(model_name, attacked)
    options: dict[str, Any] = {"face_model": model, "model": model_name, "redetect": config.fr_redetect}
    scheme = getattr(finder, "scheme", None)
    if finder is not None and scheme in getattr(model, "schemes", (scheme,)):
        options["face_finder"] = finder  # the finder that found the source's faces, where the model reads its landmarks
    targets: list[tuple[str, Any]] = [(name, None)]
    if getattr(factory, "scores_impersonation", False) and config.target_identity:
        targets.append((f"{name}-impersonation", config.target_identity))
    fars = list(config.fars) if getattr(factory, "scores_at_far", False) else []
    out = []
    for label, target in targets:
        extra = {"target": target} if target is not None else {}
        out.append((f"{label}@{model_name}{note}", {**options, **extra}))
        out += [(f"{label}@{model_name} FAR {far:g}{note}", {**options, **extra, "far": far}) for far in fars]
    return out


def build_metrics(engine, config: "EvalConfig", run: RunConfig, finder: Any,
                  unavailable: dict[str, str]) -> dict[str, Any]:
    """label -> loaded metric, for every metric of ``config.metrics`` (None: every registered one) and face
    model of ``config.face_models``; what cannot load is said in ``unavailable`` (what -> why), not raised."""
    face_models: dict[str, Any] = {}
    for name in config.face_models:
        try:
            face_models[name] = engine.load_part("face_model", name, run)
        except GuardkitError as exc:
            unavailable[f"face model {name}"] = str(exc)
    wanted = list(config.metrics) if config.metrics is not None else engine.registry.names("metric")
    attacked = attacked_models(engine, config)
    metrics: dict[str, Any] = {}
    for name in wanted:
        factory = engine.registry.get("metric", name).factory
        scored = face_models.items() if getattr(factory, "scores_faces", False) else [(None, None)]
        for model_name, model in scored:
            for label, options in metric_variants(name, factory, model_name, model, finder, config, attacked):
                try:
                    metric = engine.build_part("metric", name, run, **options)  # hands it the engine's parts
                    metric.load()
                    metrics[label] = metric
                except GuardkitError as exc:
                    if "far" in options:  # said once per model, not once per false-accept rate
                        unavailable[f"metric {name} at FAR {', '.join(f'{f:g}' for f in config.fars)} for "
                                    f"{model_name}"] = str(exc)
                    else:
                        unavailable[f"metric {label}"] = str(exc)
    return metrics


def fr_alignment(metrics: dict[str, Any], config: "EvalConfig") -> str:
    """How the face metrics aligned the edits' faces, in words, per face-model column (``report.html``,
    ``summary.json``): re-detected (with how many faces fell back to the source's landmarks) or not."""
    said = {label.split(" ")[0]: m.alignment for label, m in metrics.items() if hasattr(m, "alignment")}
    if said:
        return "; ".join(f"{label}: {alignment}" for label, alignment in said.items())
    return ("re-detected on the edit (FaceLock's evaluation)" if config.fr_redetect
            else "aligned at the source's landmarks") + "; no FR metric ran"


class RememberingFinder:
    """A face finder that remembers its last answers, so that the face metrics of one sample (fr, fr-distance,
    asr at each FAR) find the faces of one edit once."""

    def __init__(self, finder: Any, name: str, size: int = 4) -> None:
        self.finder, self.name, self.scheme, self.size = finder, name, getattr(finder, "scheme", None), size
        self.answers: dict[tuple, list[Face]] = {}

    def load(self) -> None:
        self.finder.load()

    def find(self, image: np.ndarray) -> list[Face]:
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest())
        if key not in self.answers:
            if len(self.answers) >= self.size:
                self.answers.pop(next(iter(self.answers)))
            self.answers[key] = list(self.finder.find(image))
        return self.answers[key]


def warn_unavailable(unavailable: dict[str, str], warn: Callable[[str], None]) -> None:
    for what, why in unavailable.items():
        warn(f"{what} unavailable: {why}")


__all__ = ["RememberingFinder", "attacked_models", "build_metrics", "fr_alignment", "held_out_note",
           "metric_variants", "warn_unavailable"]
