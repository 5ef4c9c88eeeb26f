"""Face finder ``insightface``: insightface's SCRFD detector (buffalo_l ``det_10g.onnx``), 5 landmarks.

The faces insightface's own ``FaceAnalysis`` would find, decoded the way its ``model_zoo/scrfd.py``
does: the photo is letterboxed into the network input (scaled to fit, kept at the top-left, zero
padded), normalised as ``cv2.dnn.blobFromImage(img, 1/128, mean=127.5, swapRB=True)`` on a BGR photo
(the network sees RGB), and for each stride (8, 16, 32 with 2 anchors per cell; or 5 strides with 1)
the score, box-distance and landmark-distance outputs are decoded around the anchor centres
(``distance2bbox``, ``distance2kps``), thresholded, merged and suppressed (NMS, IoU 0.4).
Landmarks come in insightface's ``arcface5`` order. onnxruntime is imported in ``load()``.

Example::

    finder = ScrfdFaceFinder(RunConfig(weights_dir=Path("models"))); finder.load()
    faces = finder.find(np.asarray(Image.open("me.jpg").convert("RGB")))   # biggest first
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.types import Face, LandmarkScheme
from guardkit.weights import KnownWeight, locate_insightface_file

INPUT_MEAN = 127.5
INPUT_STD = 128.0
_MAX_FILE_BYTES = 256 << 20  # det_10g.onnx is ~17 MB


@dataclass(frozen=True)
class ScrfdConfig:
    """``path``: the ONNX file (overrides the lookup of ``file`` in ``RunConfig.weights_dir`` and then
    ``~/.insightface/models/<pack>/``). ``det_size``: the square network input for graphs with a
    dynamic input size (insightface's default 640). ``threshold``: minimum face score (0.5).
    ``nms``: IoU above which a lower-scored box is dropped (0.4)."""

    path: str | None = None
    file: str = "det_10g.onnx"
    pack: str = "buffalo_l"
    det_size: int = 640
    threshold: float = 0.5
    nms: float = 0.4

    def __post_init__(self) -> None:
        if self.det_size < 32 or self.det_size % 32:
            raise ConfigError(f"det_size must be a positive multiple of 32, got {self.det_size}")
        if not 0 < self.threshold < 1 or not 0 < self.nms <= 1:
            raise ConfigError(f"threshold must be in (0, 1) and nms in (0, 1], got {self.threshold}, {self.nms}")


# ---------------------------------------------------------------------------------------------
# Pre- and post-processing (insightface model_zoo/scrfd.py), numpy only
# ---------------------------------------------------------------------------------------------


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(image, (width, height))`` (INTER_LINEAR: half-pixel centres, no antialiasing) -> uint8."""
    src_h, src_w = image.shape[:2]

    def axis(dst: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(height, src_h)
    x0, x1, fx = axis(width, src_w)
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def letterbox(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """Scale ``image`` (HxWx3 uint8) to fit ``width`` x ``height``, top-left, zero padded (SCRFD.detect).

    Returns the ``[1,3,height,width]`` float32 blob, normalised ``(x - 127.5) / 128``, and the scale
    (network pixels per photo pixel)."""
    im_ratio = image.shape[0] / image.shape[1]
    if im_ratio > height / width:
        new_h, new_w = height, int(height / im_ratio)
    else:
        new_w, new_h = width, int(width * im_ratio)
    scale = new_h / image.shape[0]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resize_bilinear(image, new_w, new_h)
    blob = (canvas.astype(np.float32) - INPUT_MEAN) / INPUT_STD
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), scale


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(x, y) of every anchor, row-major over the ``height`` x ``width`` grid, ``anchors`` per cell."""
    ys, xs = np.mgrid[:height, :width]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, anchors, axis=0)


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    return np.stack([points[:, 0] - distance[:, 0], points[:, 1] - distance[:, 1],
                     points[:, 0] + distance[:, 2], points[:, 1] + distance[:, 3]], axis=-1)  # fmt: skip


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    out = distance.reshape(len(distance), -1, 2) + points[:, None, :]
    return out.reshape(len(distance), -1)


def nms(dets: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS on ``dets`` [K,5] (x1, y1, x2, y2, score), insightface's ``+1`` pixel areas."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= threshold]
    return keep


def decode(
    outputs: list[np.ndarray], height: int, width: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCRFD outputs (scores, boxes, landmarks per stride, in that order) -> ``(scores [K],
    boxes [K,4], landmarks [K,10])`` in network pixels for every anchor scoring ``>= threshold``."""
    levels = len(outputs) // 3
    strides, anchors = ((8, 16, 32), 2) if levels == 3 else ((8, 16, 32, 64, 128), 1)
    all_scores, all_boxes, all_kps = [], [], []
    for i, stride in enumerate(strides):
        scores, boxes, kps = (np.asarray(outputs[i + k * levels], dtype=np.float32) for k in range(3))
        if scores.ndim == 3:  # batched export: [1, K, C]
            scores, boxes, kps = scores[0], boxes[0], kps[0]
        centres = anchor_centres(height // stride, width // stride, stride, anchors)
        if not (len(scores) == len(boxes) == len(kps) == len(centres)):
            raise WeightsError(f"SCRFD stride {stride} outputs {len(scores)} anchors, expected {len(centres)}")
        keep = np.where(scores.reshape(-1) >= threshold)[0]
        all_scores.append(scores.reshape(-1)[keep])
        all_boxes.append(distance2bbox(centres[keep], boxes.reshape(len(boxes), 4)[keep] * stride))
        all_kps.append(distance2kps(centres[keep], kps.reshape(len(kps), 10)[keep] * stride))
    return np.concatenate(all_scores), np.concatenate(all_boxes), np.concatenate(all_kps)


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


def _locate(config: ScrfdConfig, weights_dir: Path | None) -> Path:
    if config.path is not None:
        path = Path(config.path).expanduser()
        if not path.is_file():
            raise WeightsError(f"missing SCRFD weight file {path}: pass the path of insightface's det_10g.onnx")
        return path
    return locate_insightface_file(config.file, config.pack, weights_dir, "SCRFD")


class ScrfdFaceFinder:
    """Every face in the photo: box, score and insightface's 5 landmarks, biggest face first."""

    scheme: ClassVar[LandmarkScheme] = "arcface5"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        try:
            self.config = ScrfdConfig(**options)
        except TypeError as exc:
            raise ConfigError(f"face finder 'insightface': bad options {sorted(options)} ({exc})") from exc
        self.run = run or RunConfig()
        self.session: Any = None
        self.input_size: tuple[int, int] = (self.config.det_size, self.config.det_size)  # width, height

    def load(self) -> None:
        if self.session is not None:
            return
        path = _locate(self.config, self.run.weights_dir)
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise WeightsError(f"{path}: too large for an SCRFD detector ({path.stat().st_size} bytes)")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise WeightsError("face finder 'insightface' needs onnxruntime: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        if self.run.threads:
            options.intra_op_num_threads = self.run.threads
        try:  # the detector always runs on CPU: it runs once per photo, on the clean photo
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own Fail / InvalidProtobuf types
            first = (str(exc).strip().splitlines() or [""])[0]
            raise WeightsError(f"{path}: not a loadable SCRFD ONNX model ({type(exc).__name__}: {first})") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) not in (9, 15):
            raise WeightsError(
                f"{path}: not an SCRFD detector with landmarks (needs one image input and 9 or 15 outputs, "
                f"has {len(inputs)} inputs and {len(outputs)} outputs)"
            )
        height, width = inputs[0].shape[2:4]
        if isinstance(height, int) and isinstance(width, int):
            self.input_size = (width, height)
        self.session = session

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``image`` HxWx3 uint8 RGB -> ``dets`` [K,5] (x1, y1, x2, y2, score) and ``kps`` [K,5,2]
        in photo pixels, after NMS, highest score first (insightface's ``SCRFD.detect``)."""
        self.load()
        width, height = self.input_size
        blob, scale = letterbox(image, width, height)
        outputs = self.session.run(None, {self.session.get_inputs()[0].name: blob})
        scores, boxes, kps = decode(outputs, height, width, self.config.threshold)
        order = scores.argsort()[::-1]
        dets = np.hstack([boxes / scale, scores[:, None]]).astype(np.float32)[order]
        kps = (kps / scale).reshape(-1, 5, 2)[order]
        keep = nms(dets, self.config.nms)
        return dets[keep], kps[keep]

    def find(self, image: np.ndarray) -> list[Face]:
        """``image``: HxWx3 uint8 RGB -> faces with ``image_index`` 0, biggest first."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(f"face finder 'insightface' needs an HxWx3 RGB photo, got {image.shape}")
        dets, kps = self.detect(image)
        faces = [
            Face(0, tuple(float(v) for v in det[:4]), tuple((float(x), float(y)) for x, y in points),  # type: ignore[arg-type]
                 "arcface5", float(det[4]))
            for det, points in zip(dets, kps)
        ]  # fmt: skip
        return sorted(faces, key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), -f.score))


@hookimpl
def guardkit_register_face_finders(register: Any) -> None:
    register("insightface", ScrfdFaceFinder, summary="insightface SCRFD detector (buffalo_l det_10g ONNX) + 5 landmarks",
             weights=(KnownWeight("det_10g.onnx", "insightface", "insightface buffalo_l model pack",
                                  pack="buffalo_l"),))
