"""Benchmark: FaceLock's released loop (a) vs guardkit's ``facelock`` (b), in one process, same device.

Real SD 1.5 VAE architecture (random weights), LPIPS-alex (random), a random IResNet-50 ArcFace at 112;
timing does not depend on weight values. Reports seconds per image, images per second, peak memory
(CUDA: max_memory_allocated; CPU: peak RSS sampled) and the ratio (b)/(a) of images per second.

    python benchmarks/bench_facelock.py --device cuda --resolution 512 --steps 100 --batch 1,4,8
    python benchmarks/bench_facelock.py --device cpu --resolution 128 --steps 5 --batch 1,4 \
        --autocast none,bf16 --threads 1 --repeats 3 --json out.json

The measuring code: ``speed_suite.facelock_bench``; the released loop's port: ``reference_facelock.py``.
"""

from __future__ import annotations

import argparse
import json
import sys

import speed_suite
import torch
from guardkit.torch_settings import torch_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", default="1,4,8")
    parser.add_argument("--face-model", default="arcface", choices=["arcface", "tiny"])
    parser.add_argument("--autocast", default=None, help="none, bf16, fp16 or several: none,bf16")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--checkpointing", action="store_true", help="VAE gradient checkpointing")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    with torch_settings(threads=args.threads):
        rows = speed_suite.facelock_bench(
            device=args.device, resolution=args.resolution, steps=args.steps,
            batches=[int(b) for b in args.batch.split(",")], face_model=args.face_model, repeats=args.repeats,
            autocast_mode=args.autocast, channels_last=not args.no_channels_last, compile=args.compile,
            gradient_checkpointing=args.checkpointing, log=lambda text: print(text, file=sys.stderr, flush=True))
        threads = torch.get_num_threads()
    title = (f"facelock {args.resolution}x{args.resolution}, {args.steps} steps, {args.device} "
             f"({threads} threads), median of {args.repeats}")
    print(speed_suite.table(rows, title))
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "threads": threads, "rows": [r.as_dict() for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
