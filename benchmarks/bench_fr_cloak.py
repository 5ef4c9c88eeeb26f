"""Benchmark: the default ``guardkit run`` (``fr-cloak``, its default face models and strength) on CPU, on a
portrait and on copies of it cropped / padded (a flat border of its mean colour) to other sizes, the face
keeping its size in pixels: the cost must follow the face region, not the photo.

Reports median seconds (find + protect + save; one untimed run first), the engine's own protect
seconds, and the peak RSS (sampled) and its rise during the runs.

    python benchmarks/bench_fr_cloak.py                       # 0.25, 1, 4, 12 MP, the default strength
    python benchmarks/bench_fr_cloak.py --steps 20 --megapixels 0.25,1,4,12 --repeats 3
    python benchmarks/bench_fr_cloak.py --fr dlib --steps 100 --megapixels 0 --repeats 3   # the README's figures

The measuring code is ``guardkit.bench.protect_bench``, the same as ``guardkit bench protect PHOTO``; this
script only adds the shared portrait as the default photo. To judge protection, see ``fr_cloak_dlib.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from guardkit.bench import bench_table, protect_bench

DEFAULT_PORTRAIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "obama.jpg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=DEFAULT_PORTRAIT, help="default: ../shared/data/faces/obama.jpg")
    parser.add_argument("--fr", default=None, help="face model(s), comma-separated (default: the method's)")
    parser.add_argument("--megapixels", default="0.25,1,4,12", help="sizes; 0 = the photo as it is")
    parser.add_argument("--steps", type=int, default=None, help="default: the strength's")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = protect_bench(args.photo, method="fr-cloak", face_model=args.fr.split(",") if args.fr else None,
                         steps=args.steps, threads=args.threads,
                         megapixels=[float(m) for m in args.megapixels.split(",")], repeats=args.repeats,
                         log=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"fr-cloak ({args.fr or 'default face models'}, {rows[0].steps} steps), CPU, {args.threads} threads, "
          f"median of {args.repeats}")
    print(bench_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "rows": [r.as_dict() for r in rows]},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
