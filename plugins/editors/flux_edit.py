"""Editor ``flux-edit``: rectified-flow inversion and editing with FLUX.1 (RF-Solver-Edit style).

The photo is encoded by the VAE and packed 2x2 into tokens, as ``diffusers.FluxPipeline`` does; the
rectified flow ``dx/dt = v(x, t)`` (``x_t = (1 - t) * x_0 + t * noise``, so ``v = noise - x_0``) is
integrated from the image (t=0) to noise (t=1) under the source prompt (``invert``), then back from
that noise (t=1 -> 0) under the edit prompt (``sample``). Both directions use the same solver and the
same schedule. The default solver is RF-Solver's second-order step (Wang et al., "Taming Rectified
Flow for Inversion and Editing", arXiv 2411.04746)::

    v = v(x_t, t);  v_mid = v(x_t + dt/2 * v, t + dt/2);  dv/dt ~ (v_mid - v) / (dt/2)
    x_{t+dt} = x_t + dt * v + 0.5 * dt**2 * dv/dt

``solver="euler"`` takes first-order steps ``x_{t+dt} = x_t + dt * v`` instead.

``sample`` calls small *controls* at each step (``Control``): ``FeatureInjection`` replaces the
single-stream blocks' attention values by those recorded during the inversion (early steps),
``VelocityBlend`` mixes the edit velocity with the inversion's under a token mask (middle steps), and a
latent optimiser is a control that edits the latents in ``after_step`` (``decode_tokens`` is
differentiable for it). A plain edit is the same loop without controls.

Weights (``black-forest-labs/FLUX.1-dev``, a gated repository: accept its licence first) load offline
only, as a ``diffusers.FluxPipeline`` folder (``model_index.json`` + components), from the first of:
the ``path`` option (only that folder is searched); ``RunConfig.weights_dir / HUB_ID``; the Hugging
Face cache with ``local_files_only=True``. diffusers is imported only in ``load()``.

Example::

    editor = FluxEdit(RunConfig(device="cuda"), path="weights/black-forest-labs/FLUX.1-dev")
    inv = editor.invert(photo, "a photo of a man")              # photo [1,3,512,512] in [0,1]
    out = editor.sample(inv, "a photo of a man with glasses",
                        controls=[FeatureInjection(3), VelocityBlend(mask_tokens, 5, 20)])
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import (
    Any,
    ClassVar,
    Literal,
    Protocol,
    runtime_checkable,
)

import torch
from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError, WeightsError, first_line
from guardkit.hub import HubSource, load_offline, quiet_library_logs
from guardkit.vae import diffusers_load_kwargs

Solver = Literal["rf-solver", "euler"]
#: tokens per side of one packed latent patch, and pixels per token side (VAE 8 x packing 2)
PACK = 2
PIXELS_PER_TOKEN = 16


# ================================================================================ config and data
@dataclass(frozen=True)
class FluxEditConfig:
    """Options of ``flux-edit``.

    ``path``: a local ``FluxPipeline`` folder (only that folder is searched). ``revision``: the hub revision
    looked up in the Hugging Face cache. ``offload``: ``enable_model_cpu_offload()`` (needs accelerate and a
    GPU). ``dtype``: the pipeline's dtype (``None``: bfloat16 on CUDA, ``RunConfig.dtype`` elsewhere).
    ``steps``, ``guidance``, ``inversion_guidance``: ``edit``'s defaults. ``solver``: ``"rf-solver"``
    (second order, two transformer calls per step) or ``"euler"`` (first order). ``feature_blocks_from``:
    single-stream blocks with this index or above have their attention values recorded/injected (``None``:
    the same share of the model's depth as RF-Solver-Edit and Flux-Guard take of FLUX.1-dev's 38, blocks
    20..37, see ``feature_block_start``; so a Flux-family checkpoint with fewer blocks works too). ``feature_steps``: ``invert`` records values for
    its last ``feature_steps`` steps (the first sampling steps), enough for ``FeatureInjection(steps)`` with
    ``steps <= feature_steps``. ``max_sequence_length``: T5 tokens per prompt.
    """

    path: str | None = None
    revision: str | None = None
    offload: bool = False
    dtype: str | None = None
    steps: int = 28
    guidance: float = 3.5
    inversion_guidance: float = 1.0
    solver: Solver = "rf-solver"
    feature_blocks_from: int | None = None
    feature_steps: int = 5
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        if self.solver not in ("rf-solver", "euler"):
            raise ConfigError(f"flux-edit: solver must be 'rf-solver' or 'euler', got {self.solver!r}")
        if self.steps < 1:
            raise ConfigError(f"flux-edit: steps must be >= 1, got {self.steps}")
        if self.dtype not in (None, "float32", "float16", "bfloat16"):
            raise ConfigError(f"flux-edit: dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.feature_steps < 0 or (self.feature_blocks_from is not None and self.feature_blocks_from < 0):
            raise ConfigError("flux-edit: feature_steps and feature_blocks_from must be >= 0")


@dataclass(frozen=True)
class PromptEmbeds:
    """One prompt's text encodings: T5 tokens ``embeds`` [1,L,D], CLIP pooled ``pooled`` [1,P], ``text_ids`` [L,3]."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor


@dataclass
class Inversion:
    """What ``invert`` keeps on the device for ``sample`` and its controls.

    ``timesteps``: [steps+1], the *sampling* schedule 1 -> 0 (inversion runs it backwards: inversion step
    ``i`` goes ``timesteps[steps-i] -> timesteps[steps-i-1]``). ``latents``: the photo's tokens at t=0
    [B,N,64]; ``noise``: the tokens reached at t=1. ``velocities[i]``: ``v(x, t)`` at the start of
    inversion step ``i``; ``mid_velocities[i]``: RF-Solver's midpoint velocity of that step (empty for
    Euler). ``values[i]``: for recorded inversion steps, one ``{single block index: V [B,L,heads,head_dim]}``
    per transformer evaluation of the step (start, midpoint). Sampling step ``j`` matches inversion step
    ``matching(j) = steps - 1 - j``: they span the same interval in opposite directions. Velocities are
    ``dx/dt`` in both directions, so they need no sign change: the sampler multiplies them by its
    negative ``dt``.
    """

    noise: torch.Tensor
    latents: torch.Tensor
    timesteps: torch.Tensor
    velocities: list[torch.Tensor]
    mid_velocities: list[torch.Tensor]
    values: dict[int, tuple[dict[int, torch.Tensor], ...]]
    height: int
    width: int
    source_prompt: str
    guidance: float
    solver: Solver

    @property
    def steps(self) -> int:
        return len(self.velocities)

    def matching(self, sampling_index: int) -> int:
        """The inversion step spanning the same interval as sampling step ``sampling_index``."""
        return self.steps - 1 - sampling_index

    def velocity(self, sampling_index: int, evaluation: int = 0) -> torch.Tensor:
        """The inversion velocity matching sampling step ``sampling_index`` and ``evaluation`` (0 start, 1 midpoint)."""
        k = self.matching(sampling_index)
        return self.velocities[k] if evaluation == 0 else self.mid_velocities[k]


@dataclass
class StepState:
    """One sampling step, as controls see it.

    ``index`` runs 0..``num_steps``-1; the step goes from ``t`` to ``t_next`` (< t). ``latents`` are the
    tokens at ``t`` [B,N,64] (float32). ``evaluation``: which transformer call ``after_velocity`` is seeing
    (0: at ``t``; 1: RF-Solver's midpoint, at ``t_eval``). ``value_injection``: set by a control in
    ``before_step`` to ``{block: V}`` dicts, one per evaluation, that replace the single-stream attention
    values for this step. ``generator``: seeded from ``sample``'s seed, for controls that need randomness.
    """

    index: int
    num_steps: int
    t: float
    t_next: float
    inversion: Inversion
    latents: torch.Tensor
    editor: FluxEdit
    evaluation: int = 0
    t_eval: float = 0.0
    value_injection: tuple[dict[int, torch.Tensor], ...] | None = None
    generator: torch.Generator | None = None


# ================================================================================ controls
@runtime_checkable
class Control(Protocol):
    """Something ``FluxEdit.sample`` calls at every step; controls may keep state between calls.

    Per step: ``before_step(state)``; then, for each transformer evaluation (two per RF-Solver step),
    ``v = after_velocity(state, v)`` (``v``: the edit velocity ``dx/dt`` [B,N,64], float32); then
    ``latents = after_step(state, latents)`` with the step's result. Several controls chain in order.
    """

    def before_step(self, state: StepState) -> None: ...

    def after_velocity(self, state: StepState, v: torch.Tensor) -> torch.Tensor: ...

    def after_step(self, state: StepState, latents: torch.Tensor) -> torch.Tensor: ...


class ControlBase:
    """No-op ``Control``: subclass and override what you need."""

    def before_step(self, state: StepState) -> None:
        return None

    def after_velocity(self, state: StepState, v: torch.Tensor) -> torch.Tensor:
        return v

    def after_step(self, state: StepState, latents: torch.Tensor) -> torch.Tensor:
        return latents


class FeatureInjection(ControlBase):
    """For the first ``steps`` sampling steps, the single-stream blocks' attention values V are replaced by
    those recorded at the matching inversion step (``Inversion.matching``), evaluation by evaluation.
    Needs an inversion that recorded them (``feature_steps >= steps``)."""

    def __init__(self, steps: int) -> None:
        if steps < 0:
            raise ConfigError(f"FeatureInjection: steps must be >= 0, got {steps}")
        self.steps = steps

    def before_step(self, state: StepState) -> None:
        if state.index >= self.steps:
            return
        k = state.inversion.matching(state.index)
        if k not in state.inversion.values:
            raise ConfigError(f"FeatureInjection({self.steps}): the inversion recorded attention values for "
                              f"{len(state.inversion.values)} step(s) only; invert with feature_steps >= {self.steps}")
        state.value_injection = state.inversion.values[k]


class VelocityBlend(ControlBase):
    """For sampling steps ``start <= index < stop``: ``v = M * v_edit + (1 - M) * v_inversion``.

    ``mask_tokens`` [1 or B, N, 1] in [0,1] (1: edit here; see ``mask_to_tokens``). ``v_inversion`` is the
    velocity of the matching inversion step and evaluation (``Inversion.velocity``), used with its sign as
    recorded: both are ``dx/dt``, and the sampler's negative ``dt`` walks the inversion's path backwards, so
    an all-zero mask retraces the inversion back to the photo.
    """

    def __init__(self, mask_tokens: torch.Tensor, start: int, stop: int) -> None:
        if mask_tokens.ndim != 3 or mask_tokens.shape[-1] != 1:
            raise ConfigError(f"VelocityBlend: mask_tokens must be [B,N,1], got {tuple(mask_tokens.shape)}")
        self.mask = mask_tokens
        self.start, self.stop = start, stop

    def after_velocity(self, state: StepState, v: torch.Tensor) -> torch.Tensor:
        if not self.start <= state.index < self.stop:
            return v
        v_inv = state.inversion.velocity(state.index, state.evaluation)
        if v_inv.shape != v.shape:
            raise ConfigError(f"VelocityBlend: inversion velocity {tuple(v_inv.shape)} does not match {tuple(v.shape)}")
        m = self.mask.to(device=v.device, dtype=v.dtype)
        return m * v + (1 - m) * v_inv.to(v.dtype)


#: FLUX.1-dev's first injected single-stream block and its number of them (RF-Solver-Edit, Flux-Guard)
FLUX_DEV_FIRST_BLOCK, FLUX_DEV_SINGLE_BLOCKS = 20, 38


def feature_block_start(blocks: int) -> int:
    """The first single-stream block whose values are injected, at the same relative depth as the
    released code's 20 of FLUX.1-dev's 38 (20 for 38 blocks), and never past the last block."""
    return max(0, min(blocks - 1, round(blocks * FLUX_DEV_FIRST_BLOCK / FLUX_DEV_SINGLE_BLOCKS)))


def mask_to_tokens(mask: torch.Tensor) -> torch.Tensor:
    """An image mask [B,1,H,W] in [0,1] -> token mask [B,N,1] (average over each token's 16x16 pixels)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ConfigError(f"mask_to_tokens expects [B,1,H,W], got {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    if h % PIXELS_PER_TOKEN or w % PIXELS_PER_TOKEN:
        raise ConfigError(f"mask_to_tokens: H and W must be multiples of {PIXELS_PER_TOKEN}, got {h}x{w}")
    pooled = torch.nn.functional.avg_pool2d(mask.float(), PIXELS_PER_TOKEN)
    return pooled.flatten(2).transpose(1, 2)


# ================================================================================ packing
def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """VAE latents [B,C,h,w] (h, w even) -> tokens [B,(h/2)*(w/2),4C], as ``FluxPipeline._pack_latents``."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // PACK, PACK, w // PACK, PACK).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // PACK) * (w // PACK), c * PACK * PACK)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Tokens [B,N,4C] -> VAE latents [B,C,latent_height,latent_width]; the inverse of ``pack_latents``."""
    b, n, c4 = tokens.shape
    hh, ww = latent_height // PACK, latent_width // PACK
    if hh * ww != n:
        raise ConfigError(f"unpack_latents: {n} tokens do not fill a {latent_height}x{latent_width} latent")
    z = tokens.view(b, hh, ww, c4 // (PACK * PACK), PACK, PACK).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, c4 // (PACK * PACK), latent_height, latent_width)


def latent_image_ids(latent_height: int, latent_width: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Position ids [N,3] of the packed tokens (as ``FluxPipeline._prepare_latent_image_ids``)."""
    hh, ww = latent_height // PACK, latent_width // PACK
    ids = torch.zeros(hh, ww, 3)
    ids[..., 1] = torch.arange(hh)[:, None]
    ids[..., 2] = torch.arange(ww)[None, :]
    return ids.reshape(hh * ww, 3).to(device=device, dtype=dtype)


def flux_schedule(steps: int, image_seq_len: int, scheduler_config: Any = None) -> torch.Tensor:
    """The sampling schedule [steps+1] from 1 to 0, shifted as ``FluxPipeline`` shifts it.

    ``sigmas = linspace(1, 0, steps+1)``; with dynamic shifting (FLUX.1) ``mu = calculate_shift(image_seq_len)``
    (linear from ``base_shift`` at ``base_image_seq_len`` tokens to ``max_shift`` at ``max_image_seq_len``)
    and ``sigma' = e^mu / (e^mu + 1/sigma - 1)``; otherwise the scheduler's static ``shift``.
    """
    cfg = scheduler_config if scheduler_config is not None else {}
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    inner = sigmas[:-1]
    if get("use_dynamic_shifting", True):
        base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
        base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.15)
        m = (max_shift - base_shift) / (max_len - base_len)
        mu = image_seq_len * m + (base_shift - m * base_len)
        if get("time_shift_type", "exponential") == "linear":
            inner = mu / (mu + (1 / inner - 1))
        else:
            inner = math.exp(mu) / (math.exp(mu) + (1 / inner - 1))
    else:
        shift = get("shift", 1.0)
        inner = shift * inner / (1 + (shift - 1) * inner)
    return torch.cat([inner, sigmas[-1:]]).float()


# ================================================================================ attention values
class ValueProcessor:
    """Attention processor for a single-stream block's ``attn`` that can record or replace V.

    It computes what diffusers' ``FluxAttnProcessor`` computes for a single-stream block (no separate
    text stream, no output projection), with V exposed between the projection and the attention:
    ``record`` (a dict) receives ``V.detach().clone()`` under ``index``; ``inject`` (a tensor), when set,
    replaces V; ``observer(index, V)`` sees the V actually used. Anything else is delegated to ``inner``.
    """

    def __init__(self, index: int, inner: Any) -> None:
        self.index = index
        self.inner = inner
        self.record: dict[int, torch.Tensor] | None = None
        self.inject: torch.Tensor | None = None
        self.observer: Callable[[int, torch.Tensor], None] | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or not getattr(attn, "pre_only", False):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if self.record is not None:
            self.record[self.index] = value.detach().clone()
        if self.inject is not None:
            if self.inject.shape != value.shape:
                raise ConfigError(f"flux-edit: recorded attention values {tuple(self.inject.shape)} do not match "
                                  f"{tuple(value.shape)} (same image size and max_sequence_length needed)")
            value = self.inject.to(device=value.device, dtype=value.dtype)
        if self.observer is not None:
            self.observer(self.index, value)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                    backend=getattr(self.inner, "_attention_backend", None),
                                    parallel_config=getattr(self.inner, "_parallel_config", None))
        return out.flatten(2, 3).to(query.dtype)


# ================================================================================ the editor
class FluxEdit:
    """Rectified-flow editing with FLUX.1: ``invert`` a photo, ``sample`` it back under an edit prompt with
    controls, or ``edit`` (both, no controls). Images are [B,3,H,W] in [0,1], H and W multiples of 16."""

    name: ClassVar[str] = "flux-edit"
    differentiable: ClassVar[bool] = False  # the sampler is not; ``decode_tokens`` is
    HUB_ID: ClassVar[str] = "black-forest-labs/FLUX.1-dev"
    REVISION: ClassVar[str] = "main"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config = build_config(FluxEditConfig, options, f"editor {self.name!r}")
        self.revision = self.config.revision or self.REVISION
        self.pipe: Any = None
        self.processors: dict[int, ValueProcessor] = {}
        self._prompts: dict[str, PromptEmbeds] = {}

    # ----------------------------------------------------------------------------- loading
    def load(self) -> None:
        with quiet_library_logs():
            self._load()

    def _load(self) -> None:
        """Load the ``FluxPipeline`` offline (idempotent) and set ``ValueProcessor``s on the single-stream blocks."""
        if self.pipe is not None:
            return
        try:
            from diffusers import FluxPipeline
        except ImportError as exc:
            raise WeightsError(f"editor {self.name!r} needs diffusers: pip install diffusers") from exc
        device = self.run.torch_device()
        if self.config.dtype is not None:
            dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.config.dtype]
        else:
            dtype = torch.bfloat16 if device.type == "cuda" else self.run.torch_dtype()
        source = HubSource(self.name, self.HUB_ID, self.revision, marker="model_index.json", path_option="--editor-path",
                           note=f"{self.HUB_ID} is gated: accept its licence at https://huggingface.co/{self.HUB_ID} "
                                f"and log in (`hf auth login`)")
        pipe = load_offline(source, lambda where, **hub: FluxPipeline.from_pretrained(
            where, local_files_only=True, **hub, **_dtype_kwarg(dtype), **diffusers_load_kwargs()),
            path=self.config.path, weights_dir=self.run.weights_dir)
        for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, part, None)
            if module is not None:
                module.eval().requires_grad_(False)
        if self.config.offload:
            try:
                pipe.enable_model_cpu_offload(device=device)
            except (ImportError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"flux-edit: offload=True failed ({first_line(exc)}); it needs accelerate "
                                  f"and a GPU") from exc
        else:
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        blocks = pipe.transformer.single_transformer_blocks
        first = feature_block_start(len(blocks)) if self.config.feature_blocks_from is None \
            else self.config.feature_blocks_from
        for i in range(first, len(blocks)):
            proc = ValueProcessor(i, blocks[i].attn.processor)
            blocks[i].attn.set_processor(proc)
            self.processors[i] = proc
        self.pipe = pipe

    # ----------------------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        self.load()
        return self.pipe._execution_device

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        if height % PIXELS_PER_TOKEN or width % PIXELS_PER_TOKEN:
            raise ConfigError(f"{self.name}: image height and width must be multiples of {PIXELS_PER_TOKEN}, "
                              f"got {height}x{width} (pad or resize the photo)")
        f = self.pipe.vae_scale_factor
        return height // f, width // f

    def _vae_constants(self) -> tuple[float, float]:
        cfg = self.pipe.vae.config
        return float(cfg.scaling_factor), float(cfg.get("shift_factor", None) or 0.0)

    def encode_prompt(self, prompt: str) -> PromptEmbeds:
        """Text encodings of ``prompt`` (CLIP pooled + T5 tokens), computed once per prompt string and cached."""
        self.load()
        cached = self._prompts.get(prompt)
        if cached is not None:
            return cached
        with torch.no_grad():
            embeds, pooled, text_ids = self.pipe.encode_prompt(
                prompt=prompt, prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.config.max_sequence_length)
        out = PromptEmbeds(embeds, pooled, text_ids)
        self._prompts[prompt] = out
        return out

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] -> packed tokens [B,(H/16)*(W/16),64] of the scaled, shifted latent
        (the posterior mean), float32 on the execution device. Differentiable."""
        self.load()
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"{self.name}: expected images [B,3,H,W], got shape {tuple(images.shape)}")
        self._latent_hw(*images.shape[-2:])
        vae = self.pipe.vae
        x = (images * 2 - 1).to(device=self.device, dtype=vae.dtype)
        z = vae.encode(x).latent_dist.mean
        scale, shift = self._vae_constants()
        return pack_latents((z.float() - shift) * scale)

    def decode_tokens(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed tokens [B,N,64] of an image of ``height`` x ``width`` pixels -> images [B,3,H,W] in [0,1],
        float32. Differentiable: gradients reach ``tokens`` (for latent optimisation controls)."""
        self.load()
        lh, lw = self._latent_hw(height, width)
        scale, shift = self._vae_constants()
        z = unpack_latents(tokens, lh, lw) / scale + shift
        vae = self.pipe.vae
        x = vae.decode(z.to(device=self.device, dtype=vae.dtype)).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def velocity(self, tokens: torch.Tensor, t: float, prompt: PromptEmbeds, guidance: float, img_ids: torch.Tensor,
                 *, record: dict[int, torch.Tensor] | None = None,
                 inject: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """One transformer call: ``v(x_t, t)`` [B,N,64] float32 (``dx/dt``, t in [0,1]). ``record`` receives the
        single-stream attention values; ``inject`` ({block: V}) replaces them."""
        tr = self.pipe.transformer
        b = tokens.shape[0]
        dev = self.device
        guid = torch.full((b,), guidance, device=dev, dtype=torch.float32) if tr.config.guidance_embeds else None
        with torch.no_grad(), self._values(record, inject):
            out = tr(hidden_states=tokens.to(device=dev, dtype=tr.dtype),
                     timestep=torch.full((b,), t, device=dev, dtype=tr.dtype),
                     guidance=guid,
                     pooled_projections=prompt.pooled.expand(b, -1),
                     encoder_hidden_states=prompt.embeds.expand(b, -1, -1),
                     txt_ids=prompt.text_ids, img_ids=img_ids, return_dict=False)[0]
        return out.float()

    @contextlib.contextmanager
    def _values(self, record: dict[int, torch.Tensor] | None,
                inject: dict[int, torch.Tensor] | None) -> Iterator[None]:
        """Arm the ``ValueProcessor``s for one transformer call; always disarmed afterwards."""
        for i, proc in self.processors.items():
            proc.record = record
            proc.inject = None if inject is None else inject.get(i)
        try:
            yield
        finally:
            for proc in self.processors.values():
                proc.record, proc.inject = None, None

    def _solve_step(self, x: torch.Tensor, t: float, t_next: float, solver: Solver,
                    v_at: Callable[[torch.Tensor, float, int], torch.Tensor]) -> torch.Tensor:
        """One step of ``solver`` from ``t`` to ``t_next``; ``v_at(x, t, evaluation)`` gives the velocity."""
        dt = t_next - t
        v = v_at(x, t, 0)
        if solver == "euler":
            return x + dt * v
        v_mid = v_at(x + 0.5 * dt * v, t + 0.5 * dt, 1)
        dv_dt = (v_mid - v) / (0.5 * dt)
        return x + dt * v + 0.5 * dt ** 2 * dv_dt

    def _inversion_velocity(self, prompt: PromptEmbeds, guidance: float, img_ids: torch.Tensor,
                            velocities: list[torch.Tensor], mids: list[torch.Tensor],
                            recorded: list[dict[int, torch.Tensor]] | None,
                            x: torch.Tensor, t: float, evaluation: int) -> torch.Tensor:
        """One inversion evaluation: keeps the velocity (and the attention values when ``recorded`` is a list)."""
        record: dict[int, torch.Tensor] | None = {} if recorded is not None else None
        v = self.velocity(x, t, prompt, guidance, img_ids, record=record)
        (velocities if evaluation == 0 else mids).append(v)
        if recorded is not None:
            recorded.append(record)
        return v

    def _sampling_velocity(self, state: StepState, prompt: PromptEmbeds, guidance: float, img_ids: torch.Tensor,
                           controls: Sequence[Control], x: torch.Tensor, t: float, evaluation: int) -> torch.Tensor:
        """One sampling evaluation: injects the step's values if a control asked, then runs ``after_velocity``."""
        state.evaluation, state.t_eval = evaluation, t
        inject = state.value_injection[evaluation] if state.value_injection is not None else None
        v = self.velocity(x, t, prompt, guidance, img_ids, inject=inject)
        for control in controls:
            v = control.after_velocity(state, v)
        return v

    # ----------------------------------------------------------------------------- the contract
    def invert(self, images: torch.Tensor, source_prompt: str = "", *, steps: int = 28,
               guidance: float = 1.0, feature_steps: int | None = None) -> Inversion:
        """Integrate the flow from the photo (t=0) to noise (t=1) under ``source_prompt``.

        ``images`` [B,3,H,W] in [0,1] (H, W multiples of 16; prompts are shared across the batch). Keeps on
        the device: the per-step velocities (and RF-Solver midpoint velocities), the single-stream attention
        values of blocks >= ``feature_blocks_from`` for the last ``feature_steps`` steps (default: the
        config's), and the schedule (``flux_schedule``: FluxPipeline's sigmas shifted by ``calculate_shift``
        of the token count). The solver is the config's ``solver``.
        """
        self.load()
        solver = self.config.solver
        feature_steps = self.config.feature_steps if feature_steps is None else feature_steps
        height, width = images.shape[-2:]
        with torch.no_grad():
            x = self.encode_images(images)
        lh, lw = self._latent_hw(height, width)
        img_ids = latent_image_ids(lh, lw, self.device, self.pipe.transformer.dtype)
        schedule = flux_schedule(steps, x.shape[1], self.pipe.scheduler.config)
        prompt = self.encode_prompt(source_prompt)
        velocities: list[torch.Tensor] = []
        mids: list[torch.Tensor] = []
        values: dict[int, tuple[dict[int, torch.Tensor], ...]] = {}
        start = x
        for i in range(steps):
            t, t_next = float(schedule[steps - i]), float(schedule[steps - i - 1])
            recorded: list[dict[int, torch.Tensor]] | None = (
                [] if i >= steps - feature_steps and self.processors else None)
            v_at = functools.partial(self._inversion_velocity, prompt, guidance, img_ids, velocities, mids, recorded)
            x = self._solve_step(x, t, t_next, solver, v_at)
            if recorded is not None:
                values[i] = tuple(recorded)
        return Inversion(noise=x, latents=start, timesteps=schedule, velocities=velocities, mid_velocities=mids,
                         values=values, height=int(height), width=int(width), source_prompt=source_prompt,
                         guidance=guidance, solver=solver)

    def sample_tokens(self, inversion: Inversion, prompt: str, *, controls: Sequence[Control] = (),
                      guidance: float = 3.5, seed: int | None = None) -> torch.Tensor:
        """``sample`` without the decode: the tokens at t=0 [B,N,64] float32."""
        self.load()
        embeds = self.encode_prompt(prompt)
        lh, lw = self._latent_hw(inversion.height, inversion.width)
        img_ids = latent_image_ids(lh, lw, self.device, self.pipe.transformer.dtype)
        schedule = inversion.timesteps
        generator = torch.Generator(device=self.device).manual_seed(self.run.seed if seed is None else seed)
        x = inversion.noise.clone()
        n = inversion.steps
        for j in range(n):
            state = StepState(index=j, num_steps=n, t=float(schedule[j]), t_next=float(schedule[j + 1]),
                              inversion=inversion, latents=x, editor=self, generator=generator)
            for c in controls:
                c.before_step(state)

            v_at = functools.partial(self._sampling_velocity, state, embeds, guidance, img_ids, controls)
            x = self._solve_step(x, state.t, state.t_next, inversion.solver, v_at)
            for c in controls:
                x = c.after_step(state, x)
        return x

    def sample(self, inversion: Inversion, prompt: str, *, controls: Sequence[Control] = (),
               guidance: float = 3.5, seed: int | None = None) -> torch.Tensor:
        """Integrate back from ``inversion.noise`` (t=1 -> 0) under ``prompt`` with the inversion's solver and
        schedule, calling every control at every step (see ``Control``) -> images [B,3,H,W] in [0,1].

        ``seed`` (default ``RunConfig.seed``) seeds ``StepState.generator``; the sampler itself is
        deterministic. To reconstruct the photo, sample with the source prompt and the inversion's guidance.
        """
        tokens = self.sample_tokens(inversion, prompt, controls=controls, guidance=guidance, seed=seed)
        with torch.no_grad():
            return self.decode_tokens(tokens, inversion.height, inversion.width)

    # ----------------------------------------------------------------------------- controls it offers
    # Editing methods (Flux-Guard) get the trajectory controls from the editor they are given, so they
    # depend on the editor's contract, not on this module.
    @staticmethod
    def feature_injection(steps: int) -> "FeatureInjection":
        return FeatureInjection(steps)

    @staticmethod
    def velocity_blend(mask_tokens: torch.Tensor, start: int, stop: int) -> "VelocityBlend":
        return VelocityBlend(mask_tokens, start, stop)

    @staticmethod
    def mask_to_tokens(mask: torch.Tensor) -> torch.Tensor:
        return mask_to_tokens(mask)

    def edit(self, images: torch.Tensor, prompt: str, *, seed: int, source_prompt: str = "") -> torch.Tensor:
        """The ``Editor`` contract: ``invert`` under ``source_prompt`` (``inversion_guidance``), then ``sample``
        under ``prompt`` (``guidance``) with no controls, ``steps`` steps -> images [B,3,H,W] in [0,1] on
        ``images``' device and dtype."""
        inv = self.invert(images, source_prompt, steps=self.config.steps, guidance=self.config.inversion_guidance,
                          feature_steps=0)
        out = self.sample(inv, prompt, guidance=self.config.guidance, seed=seed)
        return out.to(device=images.device, dtype=images.dtype)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # diffusers >= 0.36 takes ``dtype`` and warns on ``torch_dtype``; older releases know only ``torch_dtype``
    from diffusers.pipelines import pipeline_utils

    return {"dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype": dtype}


@hookimpl
def guardkit_register_editors(register):
    register("flux-edit", FluxEdit, summary="FLUX.1-dev rectified-flow inversion + editing (RF-Solver; local weights)")
