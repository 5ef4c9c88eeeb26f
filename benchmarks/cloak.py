"""Personal cloak benchmark (issue 14): enrol on some photos of a person, put the cloak on photos enrolment
never saw, judge them in separate processes, and time placing against per-photo ``fr-cloak`` in one run.

Timing (medians over ``--repeats``, parts loaded once, 2 threads by default): face finding with the cloak's
finder, placing (warp, budget, 8-bit rounding), and the whole ``Engine.protect(cloak=...)`` call minus its
part loading; then one default per-photo ``fr-cloak`` run (its ``PhotoResult.seconds`` plus face finding) for
the ratio. Judges: ``judge_dlib.py`` (dlib's C++ pipeline) and ``judge_facenet.py`` (FaceNet run by OpenCV,
where its environment exists), against another clean photo of the person and between protected photos.

    python benchmarks/cloak.py [--enrol obama.jpg,obama_small.jpg,two_people.jpg] [--held obama2.jpg]
                               [--strength mid] [--steps N] [--variants K] [--out DIR] [--repeats 5] [--cloak me.cloak]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from guardkit.cloak import choose_faces, place
from guardkit.cloak_file import load_cloak
from guardkit.config import RunConfig
from guardkit.engine import Engine
from guardkit.imageio import load_rgb, save_image
from guardkit.transfer import fit_quantized
from guardkit.visibility import l2_cap

HERE = Path(__file__).resolve().parent
FACES = HERE.parents[1] / "shared" / "data" / "faces"
DEFAULT_JUDGE_PYTHON = Path("/work/judge-venv/bin/python")


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_placing(engine: Engine, cloak_path: Path, photos: list[Path], repeats: int) -> None:
    cloak = load_cloak(cloak_path)
    finder = engine.load_part("face_finder", cloak.finder, RunConfig())
    print(f"\n{'photo':16} {'MP':>5} {'find s':>7} {'place s':>8} {'protect s':>9} {'fr-cloak s':>10} {'ratio':>6}")
    for path in photos:
        image = load_rgb(path)
        x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
        faces = finder.find(image)
        cap = torch.tensor([l2_cap(cloak.psnr_floor, x.numel())])

        def placing() -> None:
            fit_quantized(x[None], place(cloak, x, choose_faces(faces, "largest"))[None], cap)

        find = median_seconds(lambda: finder.find(image), repeats)
        put = median_seconds(placing, repeats)
        engine.protect([path], cloak=cloak)  # warm-up
        whole = [engine.protect([path], cloak=cloak).photos[0] for _ in range(repeats)]
        per_call = statistics.median(p.seconds for p in whole) + find  # PhotoResult.seconds leaves finding out
        reference = engine.protect([path]).photos[0]  # per-photo fr-cloak at its defaults
        optimised = reference.seconds + find
        print(f"{path.name:16} {image.shape[0] * image.shape[1] / 1e6:5.2f} {find:7.3f} {put:8.3f} {per_call:9.3f} "
              f"{optimised:10.1f} {optimised / per_call:6.0f}x", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enrol", default="obama.jpg,obama_small.jpg,two_people.jpg")
    parser.add_argument("--held", default="obama2.jpg")
    parser.add_argument("--strength", default="mid")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--variants", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--cloak", type=Path, default=None, help="time and judge this cloak instead of enrolling")
    parser.add_argument("--judge-python", type=Path, default=DEFAULT_JUDGE_PYTHON)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="guardkit-cloak-"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    engine = Engine()
    enrol = [FACES / name for name in args.enrol.split(",")]
    held = [FACES / name for name in args.held.split(",")]
    started = time.perf_counter()
    if args.cloak is not None:
        shutil.copy(args.cloak, out / "me.cloak")
    else:
        result = engine.enroll(enrol, output=out / "me.cloak", strength=args.strength, steps=args.steps,
                               variants=args.variants, run=RunConfig(threads=args.threads), resume=False)
        print(f"enrolled on {', '.join(p.name for p in result.used)} in {time.perf_counter() - started:.0f} s "
              f"({args.threads} threads, models loaded inside)", flush=True)
    protected = engine.protect(held + enrol, cloak=out / "me.cloak", output_dir=out / "protected")
    for p in protected.photos:
        print(f"{p.source.name:16} {p.status:9} PSNR {p.psnr:5.1f} L-inf {p.linf * 255:.0f}/255 {p.note}")
    refs = Path(tempfile.mkdtemp(prefix="guardkit-cloak-refs-"))  # every photo, protected where it was
    for photo in FACES.glob("*.jpg"):
        shutil.copy(photo, refs / photo.name)
    for png in (out / "protected").glob("*.protected.png"):
        shutil.copy(png, refs / png.name.replace(".protected.png", ".jpg"))
    judges = [("dlib", [sys.executable, str(HERE / "judge_dlib.py")])]
    if args.judge_python.exists():
        judges.append(("facenet", [str(args.judge_python), str(HERE / "judge_facenet.py")]))
    status = 0
    for name, command in judges:
        print(f"\n== {name} judge: protected vs another clean photo (held out: {args.held}; enrolment photos too)",
              flush=True)
        status |= subprocess.call([*command, str(out / "protected")])
        print(f"\n== {name} judge: protected vs protected (unlinkability)", flush=True)
        status |= subprocess.call([*command, str(out / "protected"), "--faces", str(refs)])
    shutil.rmtree(refs, ignore_errors=True)
    if not args.no_timing:
        time_placing(engine, out / "me.cloak", held, args.repeats)
    return status


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
