"""Purifier ``diffpure``: DiffPure (Nie et al., "Diffusion Models for Adversarial Purification", ICML 2022,
https://arxiv.org/abs/2205.07460), in its discrete DDPM form.

The photo is resized to the model's ``sample_size``, mapped to [-1, 1] and diffused to timestep
``t* = round(t * T)`` of the model's ``T``-step schedule in one jump, ``x_t* = sqrt(abar) x + sqrt(1 - abar) noise``,
with noise from the generator. It is then denoised back to t=0 by the diffusion model:

- ``sampler="ddpm"`` (default): ancestral DDPM steps with the posterior ("fixed_small") variance, noise
  from the generator, the discrete version of DiffPure's reverse SDE;
- ``sampler="ddim"``: deterministic DDIM steps (eta=0) after the forward noise.

``steps``: the number of reverse steps, spread evenly over ``t*..0`` (``None``: every timestep, t* model
calls). The result is resized back to the photo's size and clamped to [0, 1]. Not differentiable.

Weights (a diffusers ``UNet2DModel`` and its ``DDPMScheduler``) load offline only, from the first of:

- the ``path`` option: a ``DDPMPipeline`` folder (``unet/`` and ``scheduler/``) or a flat folder
  (``config.json`` + weights + ``scheduler_config.json``, as the hub repo is); nothing else is searched;
- ``RunConfig.weights_dir / google/ddpm-celebahq-256`` (either layout);
- the Hugging Face cache, for the hub id ``google/ddpm-celebahq-256`` (``local_files_only=True``).

Example: ``DiffPure(RunConfig(weights_dir="weights"), t=0.1).purify(images, torch.Generator().manual_seed(0))``
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.hub import quiet_library_logs
from guardkit.specs import Shorthand
from guardkit.errors import ConfigError, WeightsError
from guardkit.errors import first_line
from guardkit.weights import KnownWeight, hf_cache_dir
from guardkit.vae import diffusers_load_kwargs

SAMPLERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class DiffPureConfig:
    """``t``: how far to diffuse, as a fraction of the schedule (DiffPure's t*). ``steps``: reverse steps
    (``None``: every timestep). ``sampler``: ``"ddpm"`` or ``"ddim"``. ``path``: a local model folder.
    ``revision``: the hub revision looked up in the Hugging Face cache."""

    t: float = 0.1
    steps: int | None = None
    sampler: str = "ddpm"
    path: str | None = None
    revision: str = "main"

    def __post_init__(self) -> None:
        if isinstance(self.t, bool) or not isinstance(self.t, (int, float)) or not 0 < self.t <= 1:
            raise ConfigError(f"diffpure t must be in (0, 1] (a fraction of the schedule), got {self.t!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ConfigError(f"diffpure steps must be an integer >= 1 (or none), got {self.steps!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"diffpure sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")


class DiffPure:
    """Diffuse to t* with generator noise, then denoise with a DDPM ``UNet2DModel``: [B,3,H,W] -> [B,3,H,W]."""

    name: ClassVar[str] = "diffpure"
    differentiable: ClassVar[bool] = False
    shorthand: ClassVar[Shorthand] = Shorthand("t", 100)  # diffpure10: t=0.1
    HUB_ID: ClassVar[str] = "google/ddpm-celebahq-256"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: DiffPureConfig = build_config(DiffPureConfig, options)
        self.unet = None
        self.alphas_cumprod: torch.Tensor | None = None  # float64, on the CPU
        self.prediction_type = "epsilon"
        self.clip_range: float | None = 1.0

    # ----------------------------------------------------------------------------- loading
    def load(self) -> None:
        with quiet_library_logs():
            self._load()

    def _load(self) -> None:
        if self.unet is not None:
            return
        try:
            from diffusers import DDPMScheduler, UNet2DModel
        except ImportError as exc:
            raise WeightsError("purifier 'diffpure' needs diffusers: pip install diffusers") from exc
        folder = self._find_folder()
        unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
        sched_dir = folder / "scheduler" if (folder / "scheduler" / "scheduler_config.json").is_file() else folder
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, **diffusers_load_kwargs())
                scheduler = DDPMScheduler.from_pretrained(str(sched_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"diffpure weights in {folder} are incomplete or unreadable ({first_line(exc)}): "
                               f"{self._how_to_fetch()}") from exc
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise WeightsError(f"diffpure: unsupported prediction_type {self.prediction_type!r} in {sched_dir}")
        self.clip_range = float(scheduler.config.clip_sample_range) if scheduler.config.clip_sample else None
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to(torch.float64).cpu()
        unet.to(device=self.run.torch_device(), dtype=self.run.torch_dtype()).eval().requires_grad_(False)
        self.unet = unet

    def _candidates(self) -> list[Path]:
        if self.config.path is not None:
            return [Path(self.config.path).expanduser()]
        if self.run.weights_dir is not None:
            return [Path(self.run.weights_dir).expanduser() / self.HUB_ID]
        return []

    @staticmethod
    def _is_model_folder(folder: Path) -> bool:
        return (folder / "unet" / "config.json").is_file() or (
            (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file())

    def _find_folder(self) -> Path:
        for folder in self._candidates():
            if self._is_model_folder(folder):
                return folder
        if self.config.path is not None:
            raise WeightsError(f"diffpure weights not found in {self.config.path} (need unet/ and scheduler/, or "
                               f"config.json and scheduler_config.json): {self._how_to_fetch()}")
        cache = hf_cache_dir()
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(self.HUB_ID, revision=self.config.revision, cache_dir=str(cache),
                                            local_files_only=True))
        except (ImportError, OSError, ValueError) as exc:  # LocalEntryNotFound, OfflineModeIsEnabled: OSErrors
            folder = None
            reason = first_line(exc)
        if folder is not None and self._is_model_folder(folder):
            return folder
        looked = [str(p) for p in self._candidates()] + [f"the Hugging Face cache {cache}"]
        detail = f" ({reason})" if folder is None else ""
        raise WeightsError(f"diffpure weights not found (looked in {' and '.join(looked)} for "
                           f"{self.HUB_ID}@{self.config.revision}){detail}: {self._how_to_fetch()}")

    def _how_to_fetch(self) -> str:
        rev = f" --revision {self.config.revision}" if self.config.revision != "main" else ""
        return (f"fetch them with `hf download {self.HUB_ID}{rev} --local-dir DIR/{self.HUB_ID}` on a machine "
                f"with network, then pass --weights-dir DIR (or the purifier option path=DIR/{self.HUB_ID})")

    # ----------------------------------------------------------------------------- purify
    def timesteps(self) -> list[int]:
        """The reverse trajectory, t*-1 down to 0 (0-based timesteps), ``steps`` of them (or all)."""
        if self.alphas_cumprod is None:
            self.load()
        total = len(self.alphas_cumprod)
        start = min(total, max(1, round(self.config.t * total))) - 1
        if self.config.steps is None or self.config.steps > start:
            return list(range(start, -1, -1))
        points = torch.linspace(start, 0, self.config.steps).round().long().tolist()
        return list(dict.fromkeys(points))  # unique, descending

    def _predict_x0(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's clean-image estimate and the noise it implies, at 0-based timestep ``step``."""
        abar = float(self.alphas_cumprod[step])
        param = next(self.unet.parameters())
        t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        out = self.unet(x.to(param.dtype), t).sample.to(x.dtype)[:, :3]  # learned-variance models: 6 channels
        a, s = abar ** 0.5, (1 - abar) ** 0.5
        if self.prediction_type == "epsilon":
            x0 = (x - s * out) / a
        elif self.prediction_type == "sample":
            x0 = out
        else:  # v_prediction
            x0 = a * x - s * out
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        eps = (x - a * x0) / s
        return x0, eps

    def _noise(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32).to(
            device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def purify(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> [B,3,H,W] in [0,1], deterministic for a given generator."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"purifier 'diffpure' expects images [B,3,H,W], got shape {tuple(images.shape)}")
        self.load()
        device = next(self.unet.parameters()).device
        height, width = images.shape[-2:]
        size = self.unet.config.sample_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        x = images.detach().to(device=device, dtype=torch.float32)
        if (height, width) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0, 1) * 2 - 1
        trajectory = self.timesteps()
        abar = self.alphas_cumprod
        start = trajectory[0]
        x = float(abar[start]) ** 0.5 * x + float(1 - abar[start]) ** 0.5 * self._noise(x, generator)
        for i, step in enumerate(trajectory):
            prev = trajectory[i + 1] if i + 1 < len(trajectory) else -1
            a_t = float(abar[step])
            a_p = float(abar[prev]) if prev >= 0 else 1.0
            x0, eps = self._predict_x0(x, step)
            if self.config.sampler == "ddim":
                x = a_p ** 0.5 * x0 + (1 - a_p) ** 0.5 * eps
                continue
            beta = 1 - a_t / a_p  # the effective beta of a (possibly strided) step
            mean = (a_p ** 0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_p) / (1 - a_t)) * x
            x = mean
            if prev >= 0:
                variance = max((1 - a_p) / (1 - a_t) * beta, 1e-20)
                x = x + variance ** 0.5 * self._noise(x, generator)
        out = (x + 1) / 2
        if (height, width) != size:
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return out.clamp(0, 1).to(device=images.device, dtype=images.dtype)


@hookimpl
def guardkit_register_purifiers(register):
    register("diffpure", DiffPure, summary="DiffPure: diffuse to t=0.1 and denoise with DDPM "
                                           "google/ddpm-celebahq-256 (local weights)",
             weights=(KnownWeight.hub(DiffPure.HUB_ID),))
