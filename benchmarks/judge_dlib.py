"""The judge of guardkit's offline default: dlib's own C++ pipeline, in its own process.

As a face recognition service runs it: HOG detector with one upsample (MMOD where HOG finds
nothing), 5-point landmarks, ``compute_face_descriptor``; Euclidean distance, threshold 0.6.
Three columns per probe: the protected file as saved, after a Pillow JPEG q75 re-save, and with
``num_jitters=10``. The probe/reference pairs are those of ../shared/reference/dlib.md.
A probe's distance is the smallest over the faces detected in it (the worst case for protection);
a photo where no face is found any more is reported as ``no face``.

    python benchmarks/judge_dlib.py PROTECTED_DIR [--faces ../shared/data/faces] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from guardkit.plugins.face_finders.dlib_finder import DLIB_MMOD, DLIB_SHAPE5
from guardkit.plugins.face_models.dlib_resnet import DLIB_RESNET
from guardkit.weights import locate_dlib_file

# (probe file, reference file, which face of the reference: "largest" or "smallest"); a probe with two
# people is judged once per person, each against a photo of that person
PAIRS = [
    ("obama2.jpg", "obama.jpg", "largest"),
    ("obama.jpg", "obama2.jpg", "largest"),
    ("two_people.jpg", "obama.jpg", "largest"),
    ("two_people.jpg", "biden.jpg", "largest"),
    ("biden.jpg", "two_people.jpg", "largest"),
    ("obama_small.jpg", "obama.jpg", "largest"),
]
THRESHOLD = 0.6


class DlibJudge:
    def __init__(self) -> None:
        self.hog = dlib.get_frontal_face_detector()
        self.mmod = dlib.cnn_face_detection_model_v1(str(locate_dlib_file(DLIB_MMOD)))
        self.shape = dlib.shape_predictor(str(locate_dlib_file(DLIB_SHAPE5)))
        self.net = dlib.face_recognition_model_v1(str(locate_dlib_file(DLIB_RESNET)))

    def descriptors(self, image: np.ndarray, jitters: int = 0) -> list[tuple[float, np.ndarray]]:
        """(box area, descriptor) for every face dlib finds."""
        rects = list(self.hog(image, 1)) or [d.rect for d in self.mmod(image, 1)]
        out = []
        for rect in rects:
            shape = self.shape(image, rect)
            desc = np.array(self.net.compute_face_descriptor(image, shape, jitters) if jitters
                            else self.net.compute_face_descriptor(image, shape))
            out.append((rect.area(), desc))
        return out


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def jpeg75(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def judge(protected_dir: Path, faces_dir: Path) -> list[dict]:
    j = DlibJudge()
    rows = []
    for probe, ref_name, which in PAIRS:
        protected = protected_dir / (Path(probe).stem + ".protected.png")
        if not protected.exists():
            continue
        refs = j.descriptors(load(faces_dir / ref_name))
        ref = (max if which == "largest" else min)(refs, key=lambda t: t[0])[1]
        clean = min(np.linalg.norm(d - ref) for _, d in j.descriptors(load(faces_dir / probe)))
        image = load(protected)
        row = {"probe": probe, "reference": ref_name, "clean": float(clean)}
        for column, img, jit in (("saved", image, 0), ("jpeg75", jpeg75(image), 0), ("jitter10", image, 10)):
            found = j.descriptors(img, jit)
            row[column] = float(min(np.linalg.norm(d - ref) for _, d in found)) if found else None
        original = load(faces_dir / probe).astype(np.float64)
        mse = np.mean((original - image) ** 2)
        row["psnr"] = float(10 * np.log10(255**2 / mse)) if mse else float("inf")
        row["linf"] = int(np.abs(original - image).max())
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protected_dir", type=Path)
    parser.add_argument("--faces", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/faces")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = judge(args.protected_dir, args.faces)
    fmt = lambda v: "no face" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{'probe':16} {'reference':15} {'clean':>6} {'saved':>7} {'jpeg75':>7} {'jitter10':>8} {'PSNR':>6} {'Linf':>4}")
    for r in rows:
        print(f"{r['probe']:16} {r['reference']:15} {r['clean']:6.3f} {fmt(r['saved']):>7} {fmt(r['jpeg75']):>7} "
              f"{fmt(r['jitter10']):>8} {r['psnr']:6.1f} {r['linf']:4d}")
    cols = ("saved", "jpeg75", "jitter10")
    passed = all((r[c] is None or r[c] > THRESHOLD) for r in rows for c in cols)
    worst = min((r[c] for r in rows for c in cols if r[c] is not None), default=float("nan"))
    print(f"worst distance {worst:.3f}; all > {THRESHOLD}: {passed}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
