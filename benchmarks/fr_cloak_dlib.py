"""Benchmark + judge of the offline default: protect the shared probes, then judge them with dlib.

Times each photo (median and per photo, model loading aside), then runs ``judge_dlib.py`` in a
separate process (dlib's own C++ pipeline) on the outputs.

    python benchmarks/fr_cloak_dlib.py [--out DIR] [--steps N] [-O key=value ...] [--threads 2]
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

import torch

from guardkit.cli.run import parse_pairs
from guardkit.specs import number
from guardkit.config import Budget, RunConfig, parse_fraction
from guardkit.engine import Engine

HERE = Path(__file__).resolve().parent
FACES = HERE.parents[1] / "shared" / "data" / "faces"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--eps", default="4/255")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loss", action="append")
    parser.add_argument("-O", "--option", action="append")
    parser.add_argument("--photos", nargs="*", default=["obama2.jpg", "obama.jpg", "two_people.jpg", "biden.jpg",
                                                        "obama_small.jpg"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="guardkit-bench-"))
    shutil.rmtree(out, ignore_errors=True)
    engine = Engine()
    run = RunConfig(budget=Budget(eps=parse_fraction(args.eps), steps=args.steps), threads=args.threads)
    losses = {k: float(v) for k, v in parse_pairs(args.loss, "--loss").items()} or None
    options = {k: number(v) for k, v in parse_pairs(args.option, "--option").items()}
    engine.build_method("fr-cloak", run, options=options)  # load once, outside the timings
    seconds = []
    for name in args.photos:
        started = time.perf_counter()
        result = engine.protect([FACES / name], run=run, losses=losses, options=options, output_dir=out)
        seconds.append(time.perf_counter() - started)
        photo = result.photos[0]
        print(f"{name:16} {photo.status:9} faces {photo.faces} {seconds[-1]:5.1f} s  (protect {photo.seconds:.1f} s)",
              flush=True)
    print(f"median {statistics.median(seconds):.1f} s per photo (find + protect + save, {args.threads} threads); "
          f"options {options or 'default'}, losses {losses or 'default'}, steps {args.steps}, eps {args.eps}")
    return subprocess.call([sys.executable, str(HERE / "judge_dlib.py"), str(out)])


if __name__ == "__main__":
    sys.exit(main())
