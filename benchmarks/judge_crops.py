"""A proxy for pipelines guardkit cannot see: the same two models, each reading faces through crops that
are not its own.

Every face recognition service has its own detector and crop. A perturbation fitted to one crop can lose
most of its effect under another even for the *same* network, so this judge reads each protected face
through other pipelines' crops: FaceNet on the MTCNN box with no margin, with 60 px on each side, and
through the ArcFace 5-point template (insightface's 112 px layout, scaled to 160), and dlib on that same
template (scaled to 150). It runs guardkit's own ports in-process (not independent: ``judge_dlib.py`` and
``judge_facenet.py`` are the independent judges); it measures how well a protection survives a change of
crop. Pairs as in ``judge_dlib.py``; a probe's figure is the worst case over the faces found in it; the
``clean`` column is the unprotected photo read the same way.

    python benchmarks/judge_crops.py PROTECTED_DIR [--faces ../shared/data/faces]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from guardkit.align import template_aligner
from guardkit.config import RunConfig
from guardkit.engine import Engine
from guardkit.types import Face

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from judge_dlib import PAIRS  # noqa: E402

FACENET_THRESHOLD, DLIB_THRESHOLD = 0.45, 0.6


def tensor(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    array = np.asarray(Image.open(path).convert("RGB"))
    return array, torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protected", type=Path)
    parser.add_argument("--faces", type=Path, default=HERE.parents[1] / "shared" / "data" / "faces")
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine, run = Engine(), RunConfig(threads=1)
    parts = {(kind, name): engine.build_part(kind, name, run) for kind, name in
             (("face_finder", "mtcnn"), ("face_finder", "dlib"), ("face_model", "facenet"), ("face_model", "dlib"))}
    for part in parts.values():
        part.load()
    facenet, dlib = parts["face_model", "facenet"], parts["face_model", "dlib"]
    Crop = Callable[[torch.Tensor, list[Face]], torch.Tensor]
    crops: list[tuple[str, object, str, Crop, bool]] = [
        # (name, model, finder, crop, cosine metric?)
        ("facenet box+0", facenet, "mtcnn", lambda x, f: facenet.align_boxes(x, f, (0.0,)), True),
        ("facenet box+60", facenet, "mtcnn", lambda x, f: facenet.align_boxes(x, f, (120.0,)), True),
        ("facenet template", facenet, "mtcnn", template_aligner(160), True),
        ("dlib template", dlib, "dlib", template_aligner(150), False),
    ]

    def embeddings(path: Path, finder: str, model: object, crop: Crop) -> list[tuple[float, torch.Tensor]]:
        array, x = tensor(path)
        faces = [f for f in parts["face_finder", finder].find(array) if f.box[2] - f.box[0] >= 40]
        with torch.no_grad():
            return [((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), model.embed(crop(x, [f]))[0]) for f in faces]

    print(f"{'probe':16} {'reference':16} {'crop':17} {'clean':>6} {'saved':>6}")
    unmatched, total = 0, 0
    for probe, reference, _ in PAIRS:
        if not (args.protected / probe.replace(".jpg", ".protected.png")).is_file():
            continue
        for name, model, finder, crop, cosine in crops:
            ref = max(embeddings(args.faces / reference, finder, model, crop), key=lambda t: t[0])[1]
            row = []
            for path in (args.faces / probe, args.protected / probe.replace(".jpg", ".protected.png")):
                found = embeddings(path, finder, model, crop)
                if not found:
                    row.append(float("nan"))
                    continue
                scores = [float(torch.nn.functional.cosine_similarity(e, ref, dim=0)) if cosine
                          else float((e - ref).norm()) for _, e in found]
                row.append(max(scores) if cosine else min(scores))
            free = np.isnan(row[1]) or (row[1] < FACENET_THRESHOLD if cosine else row[1] > DLIB_THRESHOLD)
            unmatched, total = unmatched + int(free), total + 1
            print(f"{probe:16} {reference:16} {name:17} {row[0]:6.3f} {row[1]:6.3f}{'' if free else '  matched'}")
    print(f"unmatched under other crops: {unmatched} of {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
