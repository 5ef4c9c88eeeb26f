"""Editor ``ip2p``: InstructPix2Pix (Brooks et al., https://arxiv.org/abs/2211.09800), the editor of FaceLock's
evaluation protocol: 512x512, 50 steps, image guidance 1.5, text guidance 7.5, the same seed for the clean
and the protected photo.

``edit(images [B,3,H,W] in [0,1], prompt, *, seed) -> [B,3,R,R] in [0,1]`` (R = ``resolution``). Each photo
is first center-cropped to a square (side ``min(H, W)``; a square photo is untouched) and then resized to
R x R (bicubic, antialiased; skipped when the photo is already R x R, so a perturbation computed at that size
reaches the editor unchanged). The paper edits square CelebA-HQ portraits resized to 512 x 512; the crop
makes non-square photos follow the same protocol instead of being stretched.

Every photo of the batch gets its own ``torch.Generator`` seeded with ``seed``, so photo i receives the same
initial latent noise and the same ancestral noise as it would alone: edits of a clean and of a protected
photo under one seed differ only through the photos.

Weights load offline only, from the first of:

- the ``path`` option: a local diffusers pipeline folder (``model_index.json`` + ``unet/``, ``vae/``, ...);
  when given, nothing else is searched;
- ``RunConfig.weights_dir / timbrooks/instruct-pix2pix``;
- the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``), read with
  ``local_files_only=True``.

The safety checker is not loaded. diffusers is imported only in ``load()``.

Example: ``InstructPix2Pix(RunConfig(device="cuda", dtype="float16")).edit(x, "Let the person turn bald", seed=0)``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError, WeightsError
from guardkit.hub import HubSource, load_offline, quiet_library_logs
from guardkit.vae import diffusers_load_kwargs
from guardkit.weights import KnownWeight


@dataclass(frozen=True)
class InstructPix2PixConfig:
    """The paper's editing protocol by default. ``resolution``: side of the square the photos are edited
    at (a multiple of 8). ``steps``: denoising steps. ``image_guidance`` / ``guidance``: image and text
    classifier-free guidance scales. ``path``: a local pipeline folder (only that folder is searched).
    ``revision``: the hub revision looked up in the Hugging Face cache."""

    resolution: int = 512
    steps: int = 50
    image_guidance: float = 1.5
    guidance: float = 7.5
    path: str | None = None
    revision: str = "main"

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"editor 'ip2p': resolution must be a positive multiple of 8, got {self.resolution}")
        if self.steps < 1:
            raise ConfigError(f"editor 'ip2p': steps must be >= 1, got {self.steps}")
        if self.image_guidance < 0 or self.guidance < 0:
            raise ConfigError(f"editor 'ip2p': guidance scales must be >= 0, got image_guidance="
                              f"{self.image_guidance}, guidance={self.guidance}")


class InstructPix2Pix:
    """InstructPix2Pix through ``diffusers.StableDiffusionInstructPix2PixPipeline``.

    images [B,3,H,W] in [0,1] -> edited [B,3,R,R] in [0,1], float, on the input's device.
    """

    name: ClassVar[str] = "ip2p"
    differentiable: ClassVar[bool] = False
    HUB_ID: ClassVar[str] = "timbrooks/instruct-pix2pix"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config = build_config(InstructPix2PixConfig, options, f"editor {self.name!r}")
        self.pipe = None

    # ----------------------------------------------------------------------------- loading
    def load(self) -> None:
        with quiet_library_logs():
            self._load()

    def _load(self) -> None:
        if self.pipe is not None:
            return
        try:
            from diffusers import StableDiffusionInstructPix2PixPipeline
        except ImportError as exc:
            raise WeightsError(f"editor {self.name!r} needs diffusers and transformers: "
                               f"pip install diffusers transformers") from exc
        cls = StableDiffusionInstructPix2PixPipeline
        source = HubSource(self.name, self.HUB_ID, self.config.revision, marker="model_index.json",
                           fetch_filter="--exclude '*.ckpt'", path_option="--editor-path")
        pipe = load_offline(source, lambda where, **hub: cls.from_pretrained(where, **hub, **self._pipeline_kwargs()),
                            path=self.config.path, weights_dir=self.run.weights_dir)
        pipe.to(self.run.torch_device())
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.eval().requires_grad_(False)
        self.pipe = pipe

    def _pipeline_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False, "feature_extractor": None,
                "dtype": self.run.torch_dtype(), "local_files_only": True, **diffusers_load_kwargs()}

    # ----------------------------------------------------------------------------- editing
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> [B,3,R,R]: center-crop to a square, then resize (skipped when already R x R)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"{self.name}.edit expects images [B,3,H,W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ConfigError(f"{self.name}.edit expects float images in [0, 1], got {images.dtype}")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ConfigError(f"{self.name}.edit expects images in [0, 1], got values in "
                              f"[{images.min().item():.3g}, {images.max().item():.3g}]")
        h, w = images.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = images[..., top:top + side, left:left + side]
        r = self.config.resolution
        if side != r:
            x = F.interpolate(x.float(), size=(r, r), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0, 1)
        return x

    @torch.no_grad()
    def edit(self, images: torch.Tensor, prompt: str, *, seed: int) -> torch.Tensor:
        """Edit every photo of ``images`` [B,3,H,W] in [0,1] under ``prompt``, noise seeded by ``seed`` per photo.

        Returns [B,3,R,R] in [0,1] on ``images``' device, in its dtype.
        """
        self.load()
        x = self.prepare(images)
        batch = x.shape[0]
        device = self.run.torch_device()
        generators = [torch.Generator(device=device).manual_seed(int(seed)) for _ in range(batch)]
        out = self.pipe(
            prompt=[prompt] * batch,
            image=x.to(device=device, dtype=self.run.torch_dtype()),
            num_inference_steps=self.config.steps,
            guidance_scale=self.config.guidance,
            image_guidance_scale=self.config.image_guidance,
            generator=generators,
            output_type="pt",
        ).images
        return out.to(device=images.device, dtype=images.dtype).clamp(0, 1)


@hookimpl
def guardkit_register_editors(register):
    register("ip2p", InstructPix2Pix, summary="InstructPix2Pix (timbrooks/instruct-pix2pix), FaceLock's editing "
                                              "protocol: 512 px, 50 steps, guidance 7.5 / image 1.5 (local weights)",
             weights=(KnownWeight.hub(InstructPix2Pix.HUB_ID),))
