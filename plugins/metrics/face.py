"""Face-recognition metrics of an edit: does the edited photo still show the source's identity?

The faces are those of ``batch.faces`` (found on the source photo); each is aligned with the same
landmarks on ``source`` and on ``edited`` and embedded by one face model. Per sample, the values of its
faces are averaged; a sample with no face gives NaN.

- ``fr``: cosine similarity of the two embeddings (FaceLock's FR column, Tab. 1; its code uses
  CVLFace's AdaFace ViT-B KPRPE and re-detects the face on each photo, guardkit aligns both photos with
  the source's landmarks: an edit is the same size as its source). Lower is better for the protection.
- ``fr-distance``: the face model's own distance (Euclidean for dlib, ``1 - cos`` for the cosine
  models). Higher is better for the protection.
- ``asr`` (attack success rate): per face 1.0 where the model's own distance exceeds its match
  threshold (the face model no longer matches the edit to the person), else 0.0; per sample the mean
  over its faces (0 or 1 for a single face). Averaged over a data set it is the ASR. Higher is better.

Options of all three: ``model`` (a registered face-model name, default ``dlib``) or ``face_model``
(an already built instance, which wins); ``asr`` also takes ``threshold`` (default: the model's own).

Example::

    fr = FaceSimilarity(RunConfig(), model="dlib"); fr.load()
    fr.score(EvalBatch(source=x, protected=p, edited=e, edited_clean=ec, prompt="...", faces=faces))
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.errors import ConfigError
from guardkit.types import EvalBatch

DEFAULT_FACE_MODEL = "dlib"

#: Match thresholds ``asr`` uses, in each model's own metric (distance; same person below it), and
#: their source. The parts' ``threshold`` class attributes hold the same values (a test checks it).
THRESHOLDS: dict[str, tuple[float, str, str]] = {
    "dlib": (0.6, "euclidean",
             ("dlib's dnn_face_recognition_ex.cpp and dlib.net blog (2017-02-12): same person below 0.6 "
              "Euclidean, 99.38% on LFW")),
    "arcface": (0.8, "1 - cosine",
                "insightface web-demos/src_recognition/main.py: 'NOT the same person' below cosine 0.2"),
    "adaface": (0.7, "1 - cosine",
                "AdaFace author, github.com/mk-minchul/AdaFace/issues/161: cosine similarity 0.3"),
}


def build_face_model(run: RunConfig, name: str) -> Any:
    """A face model from the registry by ``name`` (built, not loaded)."""
    from guardkit.engine import Engine

    return Engine().registry.get("face_model", name).factory(run)


class FaceSimilarity:
    """``fr``: mean cosine similarity between the source's faces on ``source`` and on ``edited``."""

    higher_is_better: ClassVar[bool] = False
    name: ClassVar[str] = "fr"

    def __init__(self, run: RunConfig | None = None, face_model: Any = None, model: str = DEFAULT_FACE_MODEL,
                 **options: Any) -> None:
        if options:
            raise ConfigError(f"metric {self.name!r}: unknown option(s) {', '.join(sorted(options))}; "
                              f"known: face_model, model{self._extra_options()}")
        self.run = run or RunConfig()
        self.model_name = model
        self.face_model = face_model

    def _extra_options(self) -> str:
        return ""

    def load(self) -> None:
        if self.face_model is None:
            self.face_model = build_face_model(self.run, self.model_name)
        self.face_model.load()

    def _per_face(self, batch: EvalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index, embedding of source, embedding of edited)`` for every face whose index is in the batch."""
        self.load()
        n = batch.source.shape[0]
        if batch.edited.shape != batch.source.shape:
            raise ConfigError(f"metric {self.name!r}: edited {tuple(batch.edited.shape)} and source "
                              f"{tuple(batch.source.shape)} must have one shape (faces are aligned on both)")
        faces = [f for f in batch.faces if 0 <= f.image_index < n]
        index = torch.tensor([f.image_index for f in faces], dtype=torch.long)
        if not faces:
            empty = torch.zeros(0, 1)
            return index, empty, empty
        model = self.face_model
        with torch.no_grad():
            ref = model.embed(model.align(batch.source, faces)).float()
            emb = model.embed(model.align(batch.edited, faces)).float()
        return index, ref.cpu(), emb.cpu()

    def _rows(self, ref: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(emb, ref, dim=1)

    def score(self, batch: EvalBatch) -> torch.Tensor:
        index, ref, emb = self._per_face(batch)
        n = batch.source.shape[0]
        out = torch.full((n,), math.nan, dtype=torch.float64)
        if len(index):
            rows = self._rows(ref, emb).double()
            total = torch.zeros(n, dtype=torch.float64).index_add_(0, index, rows)
            count = torch.zeros(n, dtype=torch.float64).index_add_(0, index, torch.ones_like(rows))
            out = torch.where(count > 0, total / count.clamp_min(1), out)
        return out.float().to(batch.source.device)


class FaceDistance(FaceSimilarity):
    """``fr-distance``: mean distance in the face model's own metric (Euclidean for dlib)."""

    higher_is_better: ClassVar[bool] = True
    name: ClassVar[str] = "fr-distance"

    def _rows(self, ref: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.face_model.distance(emb, ref).float().cpu()


class AttackSuccess(FaceDistance):
    """``asr``: 1.0 per face whose own-metric distance exceeds the match threshold (no match), else 0.0."""

    higher_is_better: ClassVar[bool] = True
    name: ClassVar[str] = "asr"

    def __init__(self, run: RunConfig | None = None, face_model: Any = None, model: str = DEFAULT_FACE_MODEL,
                 threshold: float | None = None, **options: Any) -> None:
        super().__init__(run, face_model=face_model, model=model, **options)
        if threshold is not None and not threshold > 0:
            raise ConfigError(f"metric 'asr': threshold must be > 0, got {threshold}")
        self._threshold = threshold

    def _extra_options(self) -> str:
        return ", threshold"

    def match_threshold(self) -> float:
        """The option if given, else the face model's own ``threshold``."""
        if self._threshold is not None:
            return float(self._threshold)
        if self.face_model is None:
            self.load()
        return float(self.face_model.threshold)

    def _rows(self, ref: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return (super()._rows(ref, emb) > self.match_threshold()).float()


@hookimpl
def guardkit_register_metrics(register: Any) -> None:
    register("fr", FaceSimilarity,
             summary="face-recognition cosine(edited, source) on the source's faces (FaceLock FR); lower = stronger")
    register("fr-distance", FaceDistance,
             summary="face model's own distance(edited, source); higher = stronger protection")
    register("asr", AttackSuccess,
             summary="1 if the face model no longer matches edited to source (distance > threshold); higher = stronger")
