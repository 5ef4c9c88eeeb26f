"""Pixel and perceptual metrics of prompt fidelity: how far the edit of the protected photo lies from
the edit of the clean photo (FaceLock, Tab. 1: PSNR, SSIM, LPIPS), and the visible cost of a protection.

All compare two ``[B,3,H,W]`` batches in [0, 1] and return one value per sample ``[B]``:

- ``psnr``: ``10 log10(1 / MSE(edited, edited_clean))`` dB, data range 1 (torchmetrics
  ``PeakSignalNoiseRatio(data_range=1.0)``, as FaceLock's ``evaluation/eval_psnr.py``); ``inf`` for
  identical images. Lower is better for the protection: it wants the edit of its photo to differ.
- ``ssim``: torchmetrics' ``StructuralSimilarityIndexMeasure(data_range=1.0)`` (FaceLock's
  ``eval_ssim.py``): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid region only (what
  torchmetrics keeps after its reflect pad and crop; skimage ``gaussian_weights=True,
  use_sample_covariance=False``), mean over channels and pixels. Lower is better for the protection.
- ``lpips``: LPIPS(edited, edited_clean) with ``guardkit.plugins.losses.lpips.LPIPS``. The default net
  is ``vgg``, the one FaceLock's ``eval_lpips.py`` uses (``lpips.LPIPS(net='vgg')``). Higher is better.
- ``protected-psnr``: PSNR(protected, source), the visible cost of the protection itself. Higher is
  better for the photo's *quality* (``higher_is_better=True``), unlike the fidelity metrics above, which
  score the protection's *effect*: it is a budget, not a goal.

Example::

    m = Psnr(RunConfig()); m.load()
    m.score(EvalBatch(source=x, protected=x, edited=y, edited_clean=y + 0.1, prompt="p"))  # ~20 dB
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.errors import ConfigError
from guardkit.lpips import BACKBONES, LPIPS, backbone_weights
from guardkit.types import EvalBatch

SSIM_KERNEL = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ConfigError(f"{what} needs two image batches [B,C,H,W] of one shape, got {tuple(a.shape)} "
                          f"and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR in dB of ``a`` vs ``b`` ``[B,C,H,W]``; ``inf`` where they are identical."""
    _check_pair(a, b, "PSNR")
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return (10 * torch.log10(data_range**2 / mse)).float()  # mse 0 -> inf


def gaussian_window(size: int = SSIM_KERNEL, sigma: float = SSIM_SIGMA, *, dtype=torch.float64) -> torch.Tensor:
    """torchmetrics' normalised 1-D Gaussian: taps at ``(1 - size)/2 ... (size - 1)/2``."""
    dist = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=dtype)
    g = torch.exp(-((dist / sigma) ** 2) / 2)
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, kernel_size: int = SSIM_KERNEL,
         sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> torch.Tensor:
    """Per-sample SSIM of ``a`` vs ``b`` ``[B,C,H,W]`` as torchmetrics computes it (see module doc).

    Computed in float64; the variances are clamped at 0 (torchmetrics >= 1.3 does the same)."""
    _check_pair(a, b, "SSIM")
    h, w = a.shape[-2:]
    if h < kernel_size or w < kernel_size:
        raise ConfigError(f"SSIM needs images of at least {kernel_size}x{kernel_size}, got {h}x{w}")
    c = a.shape[1]
    g = gaussian_window(kernel_size, sigma)
    kernel = torch.outer(g, g).to(a.device).expand(c, 1, kernel_size, kernel_size)
    x, y = a.double(), b.double()
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), kernel, groups=c).split(x.shape[0])
    mu_x, mu_y = stats[0], stats[1]
    var_x = (stats[2] - mu_x.pow(2)).clamp_min(0)
    var_y = (stats[3] - mu_y.pow(2)).clamp_min(0)
    cov = stats[4] - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1).float()


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"metric {name!r} takes no options, got {', '.join(sorted(options))}")


class Psnr:
    """PSNR(edited, edited_clean) in dB, data range 1. Lower = the protection changed the edit more."""

    higher_is_better: ClassVar[bool] = False

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        _no_options("psnr", options)
        self.run = run or RunConfig()

    def load(self) -> None:
        pass

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return psnr(batch.edited, batch.edited_clean)


class ProtectedPsnr:
    """PSNR(protected, source) in dB: the visible cost of the protection. ``higher_is_better`` here
    means better *photo quality* (a less visible perturbation), not a stronger protection."""

    higher_is_better: ClassVar[bool] = True

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        _no_options("protected-psnr", options)
        self.run = run or RunConfig()

    def load(self) -> None:
        pass

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return psnr(batch.protected, batch.source)


class Ssim:
    """SSIM(edited, edited_clean) (torchmetrics settings). Lower = the protection changed the edit more."""

    higher_is_better: ClassVar[bool] = False

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        _no_options("ssim", options)
        self.run = run or RunConfig()

    def load(self) -> None:
        pass

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return ssim(batch.edited, batch.edited_clean)


class LpipsMetric:
    """LPIPS(edited, edited_clean). Higher = the protection changed the edit more.

    Options (passed to ``LPIPS``): ``net`` ("vgg", FaceLock's choice, or "alex"), ``backbone_path``,
    ``heads_path``, ``weights_dir`` (default: the run's), ``random_backbone``, ``random_heads``
    (seeded random weights: tests and timing only, not the published LPIPS).
    """

    higher_is_better: ClassVar[bool] = True
    KNOWN: ClassVar[frozenset[str]] = frozenset(
        {"net", "backbone_path", "heads_path", "weights_dir", "random_backbone", "random_heads"})

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        unknown = set(options) - self.KNOWN
        if unknown:
            raise ConfigError(f"metric 'lpips': unknown option(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(self.KNOWN))}")
        self.run = run or RunConfig()
        options.setdefault("net", "vgg")
        if options["net"] not in BACKBONES:
            raise ConfigError(f"metric 'lpips': net must be one of {', '.join(BACKBONES)}, got {options['net']!r}")
        if options.get("weights_dir") is None and self.run.weights_dir is not None:
            options["weights_dir"] = self.run.weights_dir
        self.options = options
        self.module: LPIPS | None = None

    def load(self) -> None:
        if self.module is None:
            self.module = LPIPS(**self.options).to(self.run.torch_device())

    def score(self, batch: EvalBatch) -> torch.Tensor:
        self.load()
        assert self.module is not None
        param = self.module.heads[0]
        with torch.no_grad():
            edited = batch.edited.to(param.device, torch.float32)
            clean = batch.edited_clean.to(param.device, torch.float32)
            return self.module(edited, clean).to(batch.edited.device)


@hookimpl
def guardkit_register_metrics(register: Any) -> None:
    register("psnr", Psnr, summary="PSNR(edited, edited_clean) dB, data range 1; lower = stronger protection")
    register("ssim", Ssim, summary="SSIM(edited, edited_clean), torchmetrics settings; lower = stronger protection")
    register("lpips", LpipsMetric, summary="LPIPS(edited, edited_clean), vgg by default; higher = stronger protection",
             weights=backbone_weights())
    register("protected-psnr", ProtectedPsnr,
             summary="PSNR(protected, source) dB: visible cost of the protection; higher = better quality")
