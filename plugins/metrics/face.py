"""Face-recognition metrics of an edit: does the edited photo still show the source's identity?

The faces are those of ``batch.faces`` (found on the source photo). With ``redetect`` (the default)
they are found again on ``source`` and on ``edited``: FaceLock's evaluation (``evaluation/eval_facial.py``)
runs its aligner (CVLFace DFA) on each photo, so an edit that moves or reshapes the head is aligned
where the head now is. Each source face takes the re-detected face whose
landmark centre is nearest (within half the face's box width); where none is (the edit hid the face from
the finder), it falls back to the source's landmarks, as an aligner that always answers would, and
``fallbacks`` counts it. ``redetect=False`` aligns the edit at the source's landmarks (an edit is the
same size as its source). Per sample, the values of its faces are averaged; a sample with no face gives NaN.

- ``fr``: cosine similarity of the two embeddings (FaceLock's FR column, Tab. 1; its code uses CVLFace's
  AdaFace ViT-B KPRPE). Lower is better for the protection.
- ``fr-distance``: the face model's own distance (Euclidean for dlib, ``1 - cos`` for the cosine
  models). Higher is better for the protection.
- ``asr`` (attack success rate): per face 1.0 where the face model no longer matches the edit to the
  person, else 0.0; per sample the mean over its faces. Averaged over a data set it is the ASR. Higher
  is better. "Matches" is, by default, the model's own distance below its own threshold (``THRESHOLDS``);
  with ``far`` (0.1, 0.01 or 0.001) it is the cosine similarity above the model's threshold at that
  false-accept rate (the AMT-GAN / CLIP2Protect / DiffAM / Flux-Guard protocol, ``PROTOCOL_FAR_THRESHOLDS``,
  or a face model's own ``far_thresholds``). Where a model has no published FAR thresholds the metric
  says so (``ConfigError``) rather than invent one. With ``target`` (a photo of another person), it is
  the impersonation ASR of Flux-Guard's protocol: 1.0 where the edit DOES match the target identity.

Options of all three: ``model`` (a registered face-model name, default ``dlib``) or ``face_model`` (an
already built instance, which wins; ``model`` then names it for the threshold tables); ``redetect``
(default true), ``finder`` (face finder name, default the model's ``default_finder`` or dlib) or
``face_finder`` (an instance). ``asr`` also takes ``threshold`` (own metric), ``far`` and ``target``.
Parts given by name are built by ``parts`` (``guardkit.contracts.Parts``), which the engine that builds
the metric hands it (``needs_parts``), so they come from that engine's registry; a metric built without
an engine needs its parts as instances.

Example::

    fr = engine.build_part("metric", "fr", RunConfig(), model="dlib"); fr.load()
    fr.score(EvalBatch(source=x, protected=p, edited=e, edited_clean=ec, prompt="...", faces=faces))
    AttackSuccess(RunConfig(), model="ir152", far=0.01)     # the protocol's headline column
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.contracts import Parts
from guardkit.engine import DEFAULT_FACE_FINDER
from guardkit.ensemble import finder_of
from guardkit.errors import CapabilityError, ConfigError, NoFaceError
from guardkit.types import EvalBatch, Face

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

#: Cosine-similarity thresholds at FAR 0.1 / 0.01 / 0.001 (same person above them) of the protocol shared
#: by AMT-GAN (CVPR 2022), CLIP2Protect (CVPR 2023), DiffAM (CVPR 2024) and Flux-Guard, for its four face
#: models; FAR 0.01 is the headline column. None of guardkit's built-in face models is one of these:
#: guardkit's ``facenet`` is the CASIA-WebFace FaceNet (20180408-102900), the protocol's is the VGGFace2
#: one, so its row does not apply to it; dlib, arcface and adaface have no published FAR thresholds.
PROTOCOL_FAR_THRESHOLDS: dict[str, dict[float, float]] = {
    "ir152": {0.1: 0.0946, 0.01: 0.1668, 0.001: 0.2279},
    "irse50": {0.1: 0.1448, 0.01: 0.2410, 0.001: 0.3127},
    "facenet-vggface2": {0.1: 0.2566, 0.01: 0.4091, 0.001: 0.5912},
    "mobileface": {0.1: 0.1836, 0.01: 0.3016, 0.001: 0.3809},
}
FARS: tuple[float, ...] = (0.1, 0.01, 0.001)


def far_threshold(model_name: str, face_model: Any, far: float) -> float:
    """The cosine threshold of ``face_model`` at false-accept rate ``far``: its own ``far_thresholds``
    class attribute, else the protocol's for ``model_name``; a one-line ``ConfigError`` where neither has one."""
    table = getattr(face_model, "far_thresholds", None) or PROTOCOL_FAR_THRESHOLDS.get(model_name)
    if not table:
        raise ConfigError(
            f"face model {model_name!r} has no published FAR thresholds (the protocol's are for "
            f"{', '.join(PROTOCOL_FAR_THRESHOLDS)}; guardkit's facenet is the CASIA-WebFace model, not the "
            f"protocol's VGGFace2 one): score it at its own threshold, or give threshold=")
    for key, value in table.items():
        if math.isclose(float(key), far, rel_tol=1e-9):
            return float(value)
    raise ConfigError(f"face model {model_name!r} has FAR thresholds at {', '.join(f'{k:g}' for k in table)} "
                      f"only, not at {far:g}")


def _centre(face: Face) -> np.ndarray:
    return np.asarray(face.landmarks, dtype=np.float64).mean(axis=0)


def match_redetected(source: Face, found: Sequence[Face]) -> Face | None:
    """The face of ``found`` whose landmark centre is nearest ``source``'s, within half its box width."""
    if not found:
        return None
    centre, reach = _centre(source), 0.5 * max(source.box[2] - source.box[0], 1.0)
    best = min(found, key=lambda f: float(np.linalg.norm(_centre(f) - centre)))
    return best if float(np.linalg.norm(_centre(best) - centre)) <= reach else None


class FaceSimilarity:
    """``fr``: mean cosine similarity between the source's faces on ``source`` and on ``edited``."""

    higher_is_better: ClassVar[bool] = False
    name: ClassVar[str] = "fr"
    scores_faces: ClassVar[bool] = True  # one column per face model (options face_model, model, redetect, face_finder)
    needs_parts: ClassVar[bool] = True  # builds its face model / finder by name through the engine's ``Parts``

    def __init__(self, run: RunConfig | None = None, face_model: Any = None, model: str = DEFAULT_FACE_MODEL,
                 redetect: bool = True, finder: str | None = None, face_finder: Any = None,
                 parts: Parts | None = None, **options: Any) -> None:
        if options:
            raise ConfigError(f"metric {self.name!r}: unknown option(s) {', '.join(sorted(options))}; "
                              f"known: face_model, model, redetect, finder, face_finder{self._extra_options()}")
        self.run = run or RunConfig()
        self.parts = parts
        self.model_name = model
        self.face_model = face_model
        self.redetect = str(redetect).lower() not in ("false", "0", "no", "off")
        self.finder_name = finder
        self.face_finder = face_finder
        self.fallbacks = 0  # faces the finder did not find again on the edit (aligned at the source's landmarks)
        self.redetected = 0  # faces aligned where the finder found them on the edit

    def _extra_options(self) -> str:
        return ""

    def _build(self, kind: str, name: str) -> Any:
        """The part ``name`` of ``kind`` from the engine's ``parts`` (built, not loaded)."""
        if self.parts is None:
            raise CapabilityError(f"metric {self.name!r} builds its {kind.replace('_', ' ')} {name!r} by name, which "
                                  f"needs an engine: build the metric with engine.build_part(\"metric\", "
                                  f"{self.name!r}, run, ...), or give {kind}= as an instance")
        return self.parts.build(kind, name, self.run)

    @property
    def alignment(self) -> str:
        """How the edit's faces are aligned, in words (for reports)."""
        if not self.redetect:
            return "aligned at the source's landmarks (no re-detection)"
        finder = self.finder_name or getattr(self.face_finder, "name", None) or type(self.face_finder).__name__
        return (f"re-detected on the edit ({finder} finder), as FaceLock's evaluation; "
                f"{self.fallbacks} of {self.fallbacks + self.redetected} faces fell back to the source's landmarks")

    def load(self) -> None:
        if self.face_model is None:
            self.face_model = self._build("face_model", self.model_name)
        self.face_model.load()
        if self.redetect and self.face_finder is None:
            self.finder_name = self.finder_name or finder_of(self.face_model, DEFAULT_FACE_FINDER)
            self.face_finder = self._build("face_finder", self.finder_name)
        if self.face_finder is not None:
            self.face_finder.load()
            schemes = getattr(self.face_model, "schemes", None)
            scheme = getattr(self.face_finder, "scheme", None)
            if schemes and scheme and scheme not in schemes:
                finder = self.finder_name or type(self.face_finder).__name__
                raise ConfigError(f"metric {self.name!r}: face finder {finder!r} gives {scheme} landmarks; "
                                  f"the face model aligns from {', '.join(schemes)}")

    def _found_again(self, edited: torch.Tensor, faces: Sequence[Face], count: bool = True) -> list[Face]:
        """``faces`` as found again on ``edited`` (``redetect``), else as they are; ``count``: into
        ``redetected`` / ``fallbacks``."""
        if not self.redetect:
            return list(faces)
        out: list[Face] = []
        found: dict[int, list[Face]] = {}
        for face in faces:
            i = face.image_index
            if i not in found:
                image = torch.round(edited[i].detach().float().clamp(0, 1) * 255).to(torch.uint8)
                found[i] = list(self.face_finder.find(image.permute(1, 2, 0).cpu().numpy()))
            match = match_redetected(face, found[i])
            if count:
                self.fallbacks += match is None
                self.redetected += match is not None
            out.append(face if match is None else replace(match, image_index=i))
        return out

    def _embed(self, images: torch.Tensor, faces: Sequence[Face]) -> torch.Tensor:
        model = self.face_model
        with torch.no_grad():
            return model.embed(model.align(images, list(faces))).float().cpu()

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
        # both photos through the finder, as FaceLock's aligner runs on both: an unchanged photo scores as itself
        return (index, self._embed(batch.source, self._found_again(batch.source, faces, count=False)),
                self._embed(batch.edited, self._found_again(batch.edited, faces)))

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
    """``asr``: 1.0 per face the face model no longer matches to the person (dodging), or, with ``target``,
    matches to the target identity (impersonation); else 0.0. The match: own-metric distance below
    ``threshold`` (default the model's own), or with ``far`` cosine similarity above the model's
    threshold at that false-accept rate."""

    higher_is_better: ClassVar[bool] = True
    name: ClassVar[str] = "asr"
    scores_at_far: ClassVar[bool] = True  # takes far=: scored at each false-accept rate of the run too
    scores_impersonation: ClassVar[bool] = True  # takes target=: impersonation columns with a target identity

    def __init__(self, run: RunConfig | None = None, face_model: Any = None, model: str = DEFAULT_FACE_MODEL,
                 threshold: float | None = None, far: float | None = None,
                 target: str | Path | np.ndarray | None = None, **options: Any) -> None:
        super().__init__(run, face_model=face_model, model=model, **options)
        if threshold is not None and not threshold > 0:
            raise ConfigError(f"metric 'asr': threshold must be > 0, got {threshold}")
        if far is not None and not 0 < float(far) < 1:
            raise ConfigError(f"metric 'asr': far must be a false-accept rate in (0, 1), e.g. 0.01, got {far}")
        if far is not None and threshold is not None:
            raise ConfigError("metric 'asr': give far (a false-accept rate) or threshold (own metric), not both")
        if far is not None:  # refuse at once where no threshold is published
            far_threshold(model, face_model, float(far))
        self._threshold = threshold
        self.far = None if far is None else float(far)
        self.target = target
        self.target_embedding: torch.Tensor | None = None

    def _extra_options(self) -> str:
        return ", threshold, far, target"

    def match_threshold(self) -> float:
        """The option if given, else the model's threshold at ``far`` (cosine), else its own ``threshold``."""
        if self._threshold is not None:
            return float(self._threshold)
        if self.face_model is None:
            self.load()
        if self.far is not None:
            return far_threshold(self.model_name, self.face_model, self.far)
        return float(self.face_model.threshold)

    def load(self) -> None:
        super().load()
        if self.target is not None and self.target_embedding is None:
            self.target_embedding = self._identity(self.target)

    def _identity(self, target: str | Path | np.ndarray) -> torch.Tensor:
        """The target identity [1, D]: the embedding of the biggest face of the target photo."""
        from guardkit.imageio import load_rgb

        image = load_rgb(Path(target)) if isinstance(target, (str, Path)) else np.asarray(target)
        finder = self.face_finder
        if finder is None:
            finder = self._build("face_finder", finder_of(self.face_model, DEFAULT_FACE_FINDER))
            finder.load()
        faces = finder.find(image)
        if not faces:
            where = f" {target}" if isinstance(target, (str, Path)) else ""
            raise NoFaceError(f"metric 'asr': no face found in the target identity photo{where}")
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(255)
        return self._embed(tensor, faces[:1])

    def _rows(self, ref: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        impersonating = self.target_embedding is not None
        other = self.target_embedding.expand_as(emb) if impersonating else ref
        if self.far is not None:  # the protocol: cosine against the FAR threshold
            matches = F.cosine_similarity(emb, other, dim=1) > self.match_threshold()
        else:
            with torch.no_grad():
                matches = self.face_model.distance(emb, other).float().cpu() < self.match_threshold()
        return (matches if impersonating else ~matches).float()


@hookimpl
def guardkit_register_metrics(register: Any) -> None:
    register("fr", FaceSimilarity,
             summary="face-recognition cosine(edited, source) on the source's faces (FaceLock FR); lower = stronger")
    register("fr-distance", FaceDistance,
             summary="face model's own distance(edited, source); higher = stronger protection")
    register("asr", AttackSuccess,
             summary="1 if the face model no longer matches edited to source (own threshold, or far=0.01: the "
                     "protocol's); with target=: 1 if it matches the target (impersonation); higher = stronger")
