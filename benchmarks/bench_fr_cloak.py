"""Benchmark: the default ``fr-cloak`` (``Engine().protect`` defaults: dlib finder + dlib model, eps 4/255,
100 steps) on CPU, on a portrait and on copies of it cropped / padded (a flat border of its mean colour)
to other sizes, the face keeping its size in pixels: the cost must follow the face region, not the photo.

Reports median seconds (find + protect + save; models loaded beforehand), the engine's own protect
seconds, and the peak RSS (sampled) and its rise during the runs.

    python benchmarks/bench_fr_cloak.py                       # 0.25, 1, 4, 12 MP, default 100 steps
    python benchmarks/bench_fr_cloak.py --steps 20 --megapixels 0.25,1,4,12 --repeats 3
    python benchmarks/bench_fr_cloak.py --megapixels 0 --repeats 3   # obama.jpg as it is, defaults

Same as ``guardkit bench fr-cloak`` (guardkit.speed.fr_cloak_bench). To judge protection, see
``fr_cloak_dlib.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guardkit import speed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=None, help="default: shared/data/faces/obama.jpg")
    parser.add_argument("--megapixels", default="0.25,1,4,12", help="sizes; 0 = the photo as it is")
    parser.add_argument("--steps", type=int, default=None, help="default: the method's (100)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = speed.fr_cloak_bench(photo=args.photo, megapixels=[float(m) for m in args.megapixels.split(",")],
                                steps=args.steps, repeats=args.repeats, threads=args.threads,
                                log=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"fr-cloak (defaults{'' if args.steps is None else f', {args.steps} steps'}), CPU, {args.threads} threads, "
          f"median of {args.repeats}")
    print(speed.fr_cloak_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
