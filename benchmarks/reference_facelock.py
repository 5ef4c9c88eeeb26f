"""FaceLock's released loop, ported (our own code), and a script that runs it alone.

``bench_facelock.py`` (through ``speed_suite.facelock_bench``) times it against guardkit's ``facelock``;
``tests/test_speed.py`` checks that it lands in the same range and that its loss equals guardkit's
FaceLock objective. What it keeps from the released code
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
import contextlib
import copy
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch


def reference_facelock(x: torch.Tensor, faces: Sequence, *, vae: torch.nn.Module, face_model: Any,
                       lpips: torch.nn.Module, eps: float = 0.03, step_size: float = 0.01, iters: int = 100,
                       seed: int = 0) -> torch.Tensor:
    """FaceLock's released loop, ported: ``x`` [1,3,H,W] in [0, 1] (the released code feeds the 512x512
    photo), ``faces`` its face(s) (the released code runs a learned aligner on both images every step;
    here ``face_model.align`` at the given landmarks stands for it). ``vae``: the diffusers
    ``AutoencoderKL``; ``lpips``: an LPIPS module on [0, 1] images; ``eps`` and ``step_size`` in the
    released code's [-1, 1] units. On CUDA, as released: the VAE in fp16 (the pipeline is loaded with
    ``torch_dtype=float16``) under ``torch.autocast("cuda")`` (fp16). On CPU: fp32, no autocast.
    Returns the protected image in [0, 1]."""
    if x.shape[0] != 1:
        raise ValueError("the released FaceLock loop protects one image at a time (batch 1)")
    cuda = x.device.type == "cuda"
    if cuda:
        vae = copy.deepcopy(vae).half()
    context = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    with context:
        return _reference_loop(x, faces, vae, face_model, lpips, eps, step_size, iters, seed, cuda)


def reference_facelock_loss(X_adv: torch.Tensor, X: torch.Tensor, clean_latent: torch.Tensor, i: int, iters: int, *,
                            vae: torch.nn.Module, face_model: Any, lpips: torch.nn.Module,
                            faces: Sequence) -> torch.Tensor:
    """The loss the released loop ascends at iteration ``i`` of ``iters`` (images in [-1, 1]; ``clean_latent``
    the VAE's ``latent_dist.mean`` of ``X``): ``-cos * [i >= 0.35 iters] + 0.2 * F.mse_loss(latent, clean)
    + LPIPS * [i > 0.25 iters]``, per image."""
    import torch.nn.functional as F

    def compute_score(image1, image2):  # FR cosine similarity, as the released utils.compute_score
        feat1 = face_model.embed(face_model.align((image1 + 1) / 2, faces))
        feat2 = face_model.embed(face_model.align((image2 + 1) / 2, faces))
        return F.cosine_similarity(feat1, feat2)

    def lpips_fn(image1, image2):  # the lpips package takes [-1, 1]
        return lpips((image1 + 1) / 2, (image2 + 1) / 2)

    latent = vae.encode(X_adv.to(next(vae.parameters()).dtype)).latent_dist.mean
    image = vae.decode(latent).sample.clip(-1, 1)
    loss_cvl = compute_score(image.float(), X.float())
    loss_encoder = F.mse_loss(latent, clean_latent)
    loss_lpips = lpips_fn(image, X)
    return (-loss_cvl * (1 if i >= iters * 0.35 else 0.0) + loss_encoder * 0.2
            + loss_lpips * (1 if i > iters * 0.25 else 0.0))


def _reference_loop(x, faces, vae, face_model, lpips, eps, step_size, iters, seed, cuda):
    X = (x * 2 - 1).half() if cuda else x * 2 - 1
    generator = torch.Generator().manual_seed(seed)
    noise = (torch.rand(*X.shape, generator=generator) * 2 * eps - eps).to(X.device)
    X_adv = torch.clamp(X.clone().detach() + noise, min=-1, max=1)
    if cuda:
        X_adv = X_adv.half()
    X_adv.requires_grad_(True)
    clean_latent = vae.encode(X.to(next(vae.parameters()).dtype)).latent_dist.mean

    for i in range(iters):
        actual_step_size = step_size - (step_size - step_size / 100) / iters * i

        loss = reference_facelock_loss(X_adv, X, clean_latent, i, iters, vae=vae, face_model=face_model,
                                       lpips=lpips, faces=faces)
        grad, = torch.autograd.grad(loss.sum(), [X_adv])
        X_adv = X_adv + grad.detach().sign() * actual_step_size

        X_adv = torch.minimum(torch.maximum(X_adv, X - eps), X + eps)
        X_adv.data = torch.clamp(X_adv, min=-1, max=1)
        X_adv.grad = None
        X_adv = X_adv.detach().requires_grad_(True)  # (the released code keeps the graph's leaf implicitly)

    return ((X_adv.detach().float() + 1) / 2).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ported FaceLock loop alone and time it.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--face-model", default="arcface", choices=["arcface", "tiny"])
    args = parser.parse_args(argv)
    from speed_suite import random_face_model, random_lpips, random_sd_vae, synthetic_portraits  # (it imports this)

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
