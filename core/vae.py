"""A diffusers ``AutoencoderKL`` as a guardkit encoder; the ``sd-vae`` and ``flux`` parts set its constants.

``encode`` returns the *scaled* latent ``(mean - shift) * scale``, the tensor the diffusion model sees;
``decode`` inverts it. Scale and shift are read from the loaded config; a part's constants are used
only where the config does not state them. Weights load offline only, from the first of:

- the ``path`` option: a ``diffusers`` VAE folder (``config.json`` + weights) or a folder holding ``vae/``;
  when given, nothing else is searched;
- ``RunConfig.weights_dir / HUB_ID`` (``vae/`` inside it, or the VAE folder itself);
- the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``), read with
  ``local_files_only=True``.

diffusers is imported only in ``load()``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError, WeightsError
from guardkit.hub import HubSource, load_offline, quiet_library_logs


@dataclass(frozen=True)
class VAEConfig:
    """``path``: a local VAE folder (only that folder is searched). ``revision``: the hub revision looked
    up in the Hugging Face cache (``None``: the part's ``REVISION``). ``sample``: draw ``z`` from the
    posterior with a generator seeded from ``RunConfig.seed`` instead of using its mean.
    ``gradient_checkpointing``: trade compute for memory in the VAE's blocks."""

    path: str | None = None
    revision: str | None = None
    sample: bool = False
    gradient_checkpointing: bool = False


class DiffusersVAE:
    """A diffusers ``AutoencoderKL``: x [B,3,H,W] in [-1,1] <-> z [B,C,H/8,W/8] (scaled, shifted latents).

    Encoders built on it (``sd-vae``, ``flux``) differ only in the class constants below.
    """

    name: ClassVar[str] = "sd-vae"
    differentiable: ClassVar[bool] = True
    latent_channels: ClassVar[int] = 4
    downsample: ClassVar[int] = 8

    HUB_ID: ClassVar[str] = "timbrooks/instruct-pix2pix"
    SUBFOLDER: ClassVar[str] = "vae"
    REVISION: ClassVar[str] = "main"
    #: used only when the loaded config does not state them (SD's VAE has no shift)
    SCALING_FACTOR: ClassVar[float] = 0.18215
    SHIFT_FACTOR: ClassVar[float] = 0.0

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config = build_config(VAEConfig, options, f"encoder {self.name!r}")
        self.revision = self.config.revision or self.REVISION
        self.source = HubSource(self.name, self.HUB_ID, self.revision, self.SUBFOLDER,
                                fetch_filter=f"--include '{self.SUBFOLDER}/*'", path_option="--encoder-path")
        self.vae = None
        self.scaling_factor = self.SCALING_FACTOR
        self.shift_factor = self.SHIFT_FACTOR
        self._generator: torch.Generator | None = None

    #: the architecture ``random`` builds: the real SD 1.x VAE layout (FLUX's differs in latent layout only)
    ARCHITECTURE: ClassVar[dict[str, Any]] = {
        "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32, "sample_size": 512,
    }
    LATENT_CONFIG: ClassVar[dict[str, Any]] = {}

    @classmethod
    def random(cls, run: RunConfig | None = None, *, seed: int = 0, config: dict[str, Any] | None = None,
               **options: Any) -> "DiffusersVAE":
        """The real architecture (or ``config``) with seeded random weights, loaded: for benchmarks and
        tests, where timing and shapes do not depend on weight values. Never for protecting photos."""
        import diffusers

        part = cls(run, **options)
        architecture = config or {**cls.ARCHITECTURE, "latent_channels": cls.latent_channels,
                                  "scaling_factor": cls.SCALING_FACTOR, "shift_factor": cls.SHIFT_FACTOR or None,
                                  **cls.LATENT_CONFIG}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = diffusers.AutoencoderKL(**architecture)
        vae.to(device=part.run.torch_device(), dtype=part.run.torch_dtype()).eval().requires_grad_(False)
        if part.config.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        if part.config.sample:  # as ``_load``: samples drawn from the run's seed, not the global RNG
            part._generator = torch.Generator(device=part.run.torch_device()).manual_seed(part.run.seed)
        part.vae = vae
        return part

    # ----------------------------------------------------------------------------- loading
    def load(self) -> None:
        with quiet_library_logs():
            self._load()

    def _load(self) -> None:
        if self.vae is not None:
            return
        try:
            from diffusers import AutoencoderKL
        except ImportError as exc:
            raise WeightsError(f"encoder {self.name!r} needs diffusers: pip install diffusers") from exc
        vae = load_offline(self.source, lambda where, **hub: AutoencoderKL.from_pretrained(
            where, local_files_only=True, **hub, **diffusers_load_kwargs()), path=self.config.path,
            weights_dir=self.run.weights_dir)
        if vae.config.latent_channels != self.latent_channels:
            raise WeightsError(f"{self.name} weights have {vae.config.latent_channels} latent channels, "
                               f"expected {self.latent_channels}: wrong VAE for this encoder")
        defaults = set(vae.config.get("_use_default_values", ()))
        cfg_scale, cfg_shift = vae.config.get("scaling_factor"), vae.config.get("shift_factor")
        self.scaling_factor = float(cfg_scale) if cfg_scale is not None and "scaling_factor" not in defaults \
            else self.SCALING_FACTOR
        self.shift_factor = float(cfg_shift) if cfg_shift is not None and "shift_factor" not in defaults \
            else self.SHIFT_FACTOR
        device, dtype = self.run.torch_device(), self.run.torch_dtype()
        vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if self.config.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        if self.config.sample:
            self._generator = torch.Generator(device=device).manual_seed(self.run.seed)
        self.vae = vae

    # ----------------------------------------------------------------------------- encode / decode
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] in [-1,1] (H, W multiples of 8) -> scaled latent [B,C,H/8,W/8], x's dtype."""
        self.load()
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"{self.name}.encode expects images [B,3,H,W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ConfigError(f"{self.name}: image height and width must be multiples of {self.downsample}, "
                              f"got {h}x{w} (pad or resize the photo)")
        param = next(self.vae.parameters())
        dist = self.vae.encode(x.to(device=param.device, dtype=param.dtype)).latent_dist
        z = dist.sample(generator=self._generator) if self.config.sample else dist.mean
        z = z.to(device=x.device, dtype=x.dtype)
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B,C,h,w] -> x [B,3,8h,8w] in (about) [-1,1], z's dtype."""
        self.load()
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ConfigError(f"{self.name}.decode expects latents [B,{self.latent_channels},h,w], "
                              f"got shape {tuple(z.shape)}")
        param = next(self.vae.parameters())
        raw = z / self.scaling_factor + self.shift_factor
        x = self.vae.decode(raw.to(device=param.device, dtype=param.dtype)).sample
        return x.to(device=z.device, dtype=z.dtype)


def diffusers_load_kwargs() -> dict[str, Any]:
    """Keyword arguments for diffusers' ``from_pretrained`` on this machine."""
    # without accelerate, diffusers warns at every load unless low_cpu_mem_usage is off
    return {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


def latent_units(encoder: Any) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of an encoder whose ``encode`` returns ``(mean - shift) * scale``
    (the diffusers VAEs); ``(1, 0)`` for one that states neither. ``z / scale + shift`` is the VAE's own
    ``latent_dist.mean``: the units in which the released FaceLock, PhotoGuard and CW code measure latent
    distances (so FaceLock's lambda = 0.2 means the same here)."""
    return float(getattr(encoder, "scaling_factor", 1.0) or 1.0), float(getattr(encoder, "shift_factor", 0.0) or 0.0)
