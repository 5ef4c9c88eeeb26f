"""FaceLock's released loop, ported (our own code): see ``guardkit.speed.reference_facelock``.

The port lives in the library so that ``guardkit bench facelock`` can run it without importing from
``benchmarks/``; this file re-exports it and runs it alone. What it keeps from the released code
(github taco-group/FaceLock, ``methods.py`` ``facelock`` and ``main_defend.py``):

- uniform random start in the budget, images in [-1, 1], eps 0.03, step 0.01 decayed linearly to a
  hundredth of it, 100 iterations, signed-gradient ascent, clip to eps and to [-1, 1];
- per step one VAE encode (latent mean) and one decode of the whole 512x512 image, then every term:
  FR cosine between the decoded image and the photo (both aligned and embedded every step, as the
  released ``compute_score``), LPIPS(decoded, photo), 0.2 * MSE(latent, clean latent); FR switched on
  from 35% of the steps and LPIPS after 25% by 0/1 factors (the terms are computed anyway);
- batch 1 (a python loop over the photos); on CUDA the VAE in fp16 (the pipeline is loaded with
  ``torch_dtype=float16``) under ``torch.autocast("cuda")``; on CPU fp32 without autocast.

What differs: the released code aligns with a learned aligner (CVLFace DFA) and embeds with AdaFace
ViT-B/KPRPE; here the caller's face model aligns at given landmarks (cheaper than an aligner network)
and embeds; the LPIPS module takes [0, 1] inputs (the port converts).

    python benchmarks/reference_facelock.py --device cpu --resolution 128 --steps 5
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from guardkit.speed import (
    random_face_model,
    random_lpips,
    random_sd_vae,
    reference_facelock,
    synthetic_portraits,
)

__all__ = ["reference_facelock"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ported FaceLock loop alone and time it.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--face-model", default="arcface", choices=["arcface", "tiny"])
    args = parser.parse_args(argv)
    vae = random_sd_vae(args.device).vae
    face_model, lpips = random_face_model(args.face_model, args.device), random_lpips(args.device)
    x, faces = synthetic_portraits(1, args.resolution, args.device)
    reference_facelock(x, faces, vae=vae, face_model=face_model, lpips=lpips, iters=1)  # warm-up
    started = time.perf_counter()
    out = reference_facelock(x, faces, vae=vae, face_model=face_model, lpips=lpips, iters=args.steps)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(f"reference FaceLock loop: {seconds:.2f} s for 1 image, {args.resolution}x{args.resolution}, "
          f"{args.steps} steps, {args.device}; max |delta| {((out - x).abs().max() * 255):.1f}/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
