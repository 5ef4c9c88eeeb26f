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

``sample`` calls small *controls* at each step (``guardkit.contracts.Control``): ``FeatureInjection`` replaces the
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

This module is the editor part and its registration; the flow math (packing, schedule, solver step,
``Inversion``) is in ``flux_flow``, the attention-value processor in ``flux_attention``, the controls in
``flux_controls``, and the editor <-> control contract (``StepState``, ``Control``) in ``guardkit.contracts``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.contracts import SAMPLING, Control, StepState
from guardkit.errors import ConfigError, WeightsError, first_line
from guardkit.hub import HubSource, load_offline, quiet_library_logs
from guardkit.vae import diffusers_load_kwargs
from guardkit.weights import KnownWeight

from .flux_attention import ValueProcessor
from .flux_controls import FeatureInjection, VelocityBlend
from .flux_flow import (
    PIXELS_PER_TOKEN,
    Inversion,
    PromptEmbeds,
    Solver,
    feature_block_start,
    flux_schedule,
    latent_image_ids,
    mask_to_tokens,
    pack_latents,
    solve_step,
    unpack_latents,
)


# ================================================================================ config
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


# ================================================================================ the editor
class FluxEdit:
    """Rectified-flow editing with FLUX.1: ``invert`` a photo, ``sample`` it back under an edit prompt with
    controls, or ``edit`` (both, no controls). Images are [B,3,H,W] in [0,1], H and W multiples of 16."""

    name: ClassVar[str] = "flux-edit"
    differentiable: ClassVar[bool] = False  # the sampler is not; ``decode_tokens`` is
    provides: ClassVar[tuple[str, ...]] = (SAMPLING,)  # a ``guardkit.contracts.SamplingEditor``
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
            x = solve_step(x, t, t_next, solver, v_at)
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
            x = solve_step(x, state.t, state.t_next, inversion.solver, v_at)
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
    def feature_injection(steps: int) -> FeatureInjection:
        return FeatureInjection(steps)

    @staticmethod
    def velocity_blend(mask_tokens: torch.Tensor, start: int, stop: int) -> VelocityBlend:
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
    register("flux-edit", FluxEdit, summary="FLUX.1-dev rectified-flow inversion + editing (RF-Solver; local weights)",
             weights=(KnownWeight.hub(FluxEdit.HUB_ID,
                                      note=f"accept the licence at https://huggingface.co/{FluxEdit.HUB_ID}"),))
