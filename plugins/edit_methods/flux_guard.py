"""Edit method ``flux-guard``: a text edit with FLUX.1 whose result face recognition does not link to you.

Flux-Guard (Wang, Wang, Zhang, Liu, "Flux-Guard: Facial Identity Protection using diffusion models",
arXiv 2606.17606; code github JLMWang/Flux-Guard) controls the editor's sampling trajectory:

1. inversion: the photo is inverted under the source prompt (guidance 1, RF-Solver; ``flux-edit``);
2. value-feature injection for the first steps: 3 when the edit region covers under 10% of the photo,
   otherwise 5 (``FeatureInjection``);
3. region-aware velocity blending for the middle steps (5 up to ``steps - adv_steps``):
   ``v = M * v_edit + (1 - M) * v_inversion`` (``VelocityBlend``), where M is the edit region: the regions
   the prompt names (``prompt_regions``) taken from a face parsing of the photo (``landmarks`` parser by
   default) or a user mask, blurred and average-pooled to the latent token grid;
4. latent adversarial optimisation in the last ``adv_steps`` steps (5): after each step the latent tokens
   are optimised by Adam (lr 0.02, 10 iterations) against ``w_id * L_id + w_perc * L_perc``:
   decode, crop every face by each face model's differentiable alignment warp from the landmarks found
   on the source photo, embed with the ensemble of face models;
   ``L_id`` = mean cosine similarity to the source identity (dodging, the default) or
   ``1 - cosine`` to a target identity (impersonation); ``L_perc`` = LPIPS between this decode and the
   clean trajectory's decode at the same step; the weight, recomputed every iteration, is
   ``w_id = clip(0.05 + 0.95 / (1 + exp(20 * (L_perc - 0.3))), 0.05, 1)``.

The clean trajectory is the same sampling without step 4; it is run first (recording its latents) and
the adversarial one second, as the paper's code runs them side by side: about 150 transformer calls
per photo at 25 steps (50 inversion, 50 clean, 50 adversarial) plus ``adv_steps * iterations`` VAE
decodes with backward. With ``adversarial=False`` only the clean trajectory runs, and the result is
exactly ``flux-edit``'s sample with the same injection and blending controls.

Where we differ from the released code (see docs/flux-guard.md): faces are cropped by the alignment
warp of each face model (the code resizes the whole image); the decode is of the one-step clean
prediction ``x0 = x_t - t * v`` (``decode="x0"``; at the last step ``t = 0`` so it is the latent itself)
rather than of the noisy latent; ``L_perc`` is LPIPS (``perceptual="lpips"``) rather than VGG19 relu3_4
MSE; dodging is the default and impersonation needs ``--target-identity``.

Example::

    guard = FluxGuard(run, editor=flux_edit, face_models=[dlib], face_parser=landmarks)
    edited, report = guard.protect(photo, faces, "a photo of a man with blond hair",
                                   source_prompt="a photo of a man", seed=0)

This module is the edit method and its registration; the edit region (prompt -> regions -> mask) is in
``flux_guard_regions``, the adversarial stage's controls in ``flux_guard_latent``. The editor is any
``guardkit.contracts.SamplingEditor`` (``needs_editor = (SAMPLING,)``, checked before weights load).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.contracts import SAMPLING, Control, Parts, SamplingEditor, check_editor
from guardkit.errors import CapabilityError, ConfigError
from guardkit.lpips import backbone_weights
from guardkit.types import Face

from .flux_guard_latent import (
    GuardStep,
    LatentGuard,
    TrajectoryRecorder,
    adaptive_id_weight,
)
from .flux_guard_regions import (
    REGIONS,
    WHOLE_FACE,
    blur_mask,
    edit_mask,
    prompt_regions,
)

__all__ = ["REGIONS", "WHOLE_FACE", "FluxGuard", "FluxGuardConfig", "GuardReport", "GuardStep", "adaptive_id_weight",
           "blur_mask", "edit_mask", "prompt_regions", "protect"]


# ================================================================================ config
@dataclass(frozen=True)
class FluxGuardConfig:
    """Options of ``flux-guard`` (``-O key=value``); defaults are the released code's.

    ``steps``, ``guidance``, ``inversion_guidance``: the sampling plan (25, 5.5, 1). ``injection_steps``:
    value-feature injection steps (``None``: ``injection_small`` = 3 when the edit region covers under
    ``small_region`` = 10% of the photo, else ``injection_large`` = 5). ``blend_start``, ``blend_stop``:
    velocity blending for steps ``blend_start <= j < blend_stop`` (``None``: ``steps - adv_steps``, so 5..19).
    ``mask_blur``: Gaussian sigma of the edit mask, as a fraction of the photo's shorter side.
    ``adversarial``: run the latent optimisation (off: the region-controlled edit only). ``adv_steps``: the
    last K steps optimised; ``lr``, ``iterations``: Adam per step; ``w_perc``: weight of ``L_perc``;
    ``w_id_low``, ``w_id_high``, ``w_id_sharpness``, ``w_id_knee``: the adaptive identity weight.
    ``decode``: ``"x0"`` (decode the one-step clean prediction ``x_t - t * v``) or ``"latent"`` (decode
    the latent as it is). ``perceptual``: ``"lpips"`` (AlexNet LPIPS; its weights from ``lpips_weights_dir`` or
    the torch hub cache, or ``lpips_backbone_path`` / ``lpips_heads_path``) or ``"lpips-vgg"``;
    ``lpips_random``: seeded random LPIPS weights (tests only).
    """

    steps: int = 25
    guidance: float = 5.5
    inversion_guidance: float = 1.0
    injection_steps: int | None = None
    injection_small: int = 3
    injection_large: int = 5
    small_region: float = 0.10
    blend_start: int = 5
    blend_stop: int | None = None
    mask_blur: float = 0.02
    adversarial: bool = True
    adv_steps: int = 5
    lr: float = 0.02
    iterations: int = 10
    w_perc: float = 0.5
    w_id_low: float = 0.05
    w_id_high: float = 1.0
    w_id_sharpness: float = 20.0
    w_id_knee: float = 0.3
    decode: Literal["x0", "latent"] = "x0"
    perceptual: Literal["lpips", "lpips-vgg"] = "lpips"
    lpips_weights_dir: str | None = None
    lpips_backbone_path: str | None = None
    lpips_heads_path: str | None = None
    lpips_random: bool = False

    def __post_init__(self) -> None:
        def bad(text: str) -> ConfigError:
            return ConfigError(f"flux-guard: {text}")

        for name in ("steps", "adv_steps", "iterations", "blend_start", "injection_small", "injection_large"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "steps" else 0):
                raise bad(f"{name} must be an integer >= {1 if name == 'steps' else 0}, got {value!r}")
        if self.adv_steps > self.steps:
            raise bad(f"adv_steps ({self.adv_steps}) cannot exceed steps ({self.steps})")
        if self.injection_steps is not None and not 0 <= self.injection_steps <= self.steps:
            raise bad(f"injection_steps must be in 0..steps, got {self.injection_steps}")
        if self.blend_stop is not None and not 0 <= self.blend_stop <= self.steps:
            raise bad(f"blend_stop must be in 0..steps, got {self.blend_stop}")
        if self.lr <= 0 or self.w_perc < 0 or not 0 <= self.small_region <= 1 or self.mask_blur < 0:
            raise bad("lr must be > 0, w_perc and mask_blur >= 0, small_region in [0, 1]")
        if not 0 <= self.w_id_low <= self.w_id_high:
            raise bad("need 0 <= w_id_low <= w_id_high")
        if self.decode not in ("x0", "latent"):
            raise bad(f"decode must be 'x0' or 'latent', got {self.decode!r}")
        if self.perceptual not in ("lpips", "lpips-vgg"):
            raise bad(f"perceptual must be 'lpips' or 'lpips-vgg', got {self.perceptual!r}")
        if not isinstance(self.adversarial, bool):
            raise bad(f"adversarial must be true or false, got {self.adversarial!r}")

    @property
    def stop(self) -> int:
        """Where blending stops (exclusive)."""
        return self.steps - self.adv_steps if self.blend_stop is None else self.blend_stop


# ================================================================================ the method
@dataclass
class GuardReport:
    """What one ``protect`` call did. ``regions``: what the prompt named; ``mask_share``: the edit region's
    share of the photo (before blurring); ``injection_steps``; ``blend``: (start, stop); ``history``: every
    Adam iteration; ``final``: each optimised step after its last update; ``clean``: the clean trajectory's
    edit [1,3,H,W] (what ``adversarial=False`` returns); ``mask``: the blurred mask [1,1,H,W];
    ``mask_tokens`` [1,N,1]; ``seconds``."""

    regions: set[str]
    mask_share: float
    injection_steps: int
    blend: tuple[int, int]
    adversarial: bool
    history: list[GuardStep] = field(default_factory=list)
    final: list[GuardStep] = field(default_factory=list)
    clean: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    mask_tokens: torch.Tensor | None = None
    seconds: float = 0.0

    @property
    def l_id(self) -> list[float]:
        """``L_id`` over all iterations, then the final value."""
        return [h.l_id for h in self.history] + ([self.final[-1].l_id] if self.final else [])


class FluxGuard:
    """Flux-Guard: privacy-preserving text editing on a ``flux-edit``-like editor (see the module docstring).

    Parts are injected: ``editor`` (a ``guardkit.contracts.SamplingEditor``: it declares ``provides`` with
    ``SAMPLING``), ``face_models`` (differentiable, an ensemble), ``face_parser`` (``parse(image, faces) ->
    {region: mask}``).
    """

    name: ClassVar[str] = "flux-guard"
    config_class: ClassVar[type] = FluxGuardConfig
    needs: ClassVar[frozenset[str]] = frozenset({"editor", "face_model", "face_parser"})
    needs_gradients: ClassVar[bool] = True
    needs_editor: ClassVar[tuple[str, ...]] = (SAMPLING,)  # what the editor must provide (checked before loading)
    default_steps: ClassVar[int] = FluxGuardConfig.steps
    default_losses: ClassVar[dict[str, float]] = {"identity (adaptive w_id)": 1.0, "lpips vs clean": 0.5}

    def __init__(self, run: RunConfig | None = None, *, editor: SamplingEditor | None = None,
                 face_models: Sequence[Any] = (),
                 face_parser: Any = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config = build_config(FluxGuardConfig, options, "flux-guard")
        self.editor, self.face_models, self.face_parser = editor, list(face_models), face_parser
        self._lpips: torch.nn.Module | None = None

    def load(self) -> None:
        """Check the parts (before any weight loads), then load them (editor, face models, parser, LPIPS)."""
        if self.editor is None:
            raise CapabilityError("flux-guard needs an editor that samples under controls (flux-edit); none was given")
        check_editor(self.name, self.needs_editor, getattr(self.editor, "name", type(self.editor).__name__),
                     getattr(self.editor, "provides", ()))
        if self.config.adversarial and not self.face_models:
            raise CapabilityError("flux-guard needs at least one face model (--fr) for its adversarial stage")
        for model in self.face_models:
            if not getattr(model, "differentiable", False):
                raise CapabilityError(f"flux-guard needs gradients, but face model "
                                      f"{getattr(model, 'name', type(model).__name__)!r} has none")
        self.editor.load()
        for model in self.face_models:
            model.load()
        if self.face_parser is not None:
            self.face_parser.load()
        if self.config.adversarial and self._lpips is None:  # a missing LPIPS weight fails here, before sampling
            self._lpips = self._build_lpips()

    def _build_lpips(self) -> torch.nn.Module:
        from guardkit.lpips import LPIPS

        net = "vgg" if self.config.perceptual == "lpips-vgg" else "alex"
        rnd = self.config.lpips_random
        return LPIPS(net, weights_dir=self.config.lpips_weights_dir or self.run.weights_dir,
                     backbone_path=self.config.lpips_backbone_path, heads_path=self.config.lpips_heads_path,
                     random_backbone=rnd, random_heads=rnd).to(self.run.torch_device())

    # ----------------------------------------------------------------------------- losses
    def perceptual(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """LPIPS [B] between two decodes in [0,1]."""
        if self._lpips is None:
            self._lpips = self._build_lpips()
        return self._lpips.to(images.device)(images, reference)

    def embed(self, images: torch.Tensor, faces: Sequence[Face]) -> list[torch.Tensor]:
        """Per face model: embeddings [N_faces, D] of ``faces`` in ``images`` (differentiable)."""
        return [m.embed(m.align(images, faces)) for m in self.face_models]

    def identity_loss(self, images: torch.Tensor, faces: Sequence[Face], reference: list[torch.Tensor],
                      target: list[torch.Tensor] | None) -> torch.Tensor:
        """Dodging (``target`` None): mean cosine to ``reference``; impersonation: mean ``1 - cosine`` to
        ``target`` ([1,D] per model, broadcast over faces). Averaged over faces and the ensemble."""
        terms = []
        for emb, ref, tgt in zip(self.embed(images, faces), reference,
                                 target if target is not None else [None] * len(reference)):
            if tgt is None:
                terms.append(F.cosine_similarity(emb, ref.to(emb), dim=-1).mean())
            else:
                terms.append((1 - F.cosine_similarity(emb, tgt.to(emb).expand_as(emb), dim=-1)).mean())
        return torch.stack(terms).mean()

    def identity(self, image: torch.Tensor, faces: Sequence[Face]) -> list[torch.Tensor]:
        """A target identity from a photo [1,3,H,W] and its faces: the mean embedding of its faces per model [1,D]."""
        if not faces:
            raise ConfigError("the target identity photo has no face")
        with torch.no_grad():
            return [e.mean(0, keepdim=True) for e in self.embed(image, faces)]

    # ----------------------------------------------------------------------------- the mask
    def mask_for(self, image: torch.Tensor, faces: Sequence[Face], prompt: str, source_prompt: str = "",
                 mask: torch.Tensor | None = None) -> tuple[set[str], torch.Tensor, float]:
        """``(regions, edit mask [1,1,H,W] before blurring, its share of the photo)``; ``mask`` overrides the parsing."""
        regions = prompt_regions(prompt, source_prompt)
        height, width = image.shape[-2:]
        if mask is not None:
            m = mask.float()
            if m.ndim == 2:
                m = m[None, None]
            if m.ndim != 4 or m.shape[:2] != (1, 1):
                raise ConfigError(f"flux-guard: the mask must be [1,1,H,W], got {tuple(mask.shape)}")
            if m.shape[-2:] != (height, width):
                m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
            m = m.clamp(0, 1).to(image.device)
            regions = {"mask"}
        else:
            if self.face_parser is None:
                raise CapabilityError("flux-guard needs a face parser (or a mask) to find the edit region")
            m = edit_mask(self.face_parser.parse(image, faces), regions).to(image.device)
        return regions, m, float(m.mean())

    # ----------------------------------------------------------------------------- protect
    def protect(self, image: torch.Tensor, faces: Sequence[Face], prompt: str, *, source_prompt: str = "",
                seed: int | None = None, target_embeddings: list[torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, controls: Sequence[Control] = ()) -> tuple[torch.Tensor, GuardReport]:
        """Edit ``image`` [1,3,H,W] in [0,1] (H, W multiples of 16) under ``prompt`` and protect its faces.

        ``faces``: found on ``image`` (their landmarks place the alignment crops). ``target_embeddings``:
        one [1,D] per face model (``identity``) for impersonation; ``None``: dodging. ``mask`` [1,1,H,W]
        overrides the prompt's regions. ``controls``: extra editor controls run after the trajectory controls in
        both passes (observers, for tests and reports). Returns ``(edited [1,3,H,W] in [0,1] on image's device, report)``.
        """
        started = time.perf_counter()
        cfg = self.config
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ConfigError(f"flux-guard edits one photo [1,3,H,W] at a time, got {tuple(image.shape)}")
        if cfg.adversarial and not faces:
            raise ConfigError("flux-guard: no face to protect in this photo")
        if target_embeddings is not None and len(target_embeddings) != len(self.face_models):
            raise ConfigError(f"flux-guard: {len(target_embeddings)} target embeddings for "
                              f"{len(self.face_models)} face models")
        self.load()
        regions, raw, share = self.mask_for(image, faces, prompt, source_prompt, mask)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        blurred = blur_mask(raw, cfg.mask_blur * min(height, width))
        tokens_mask = self.editor.mask_to_tokens(blurred)
        n_inject = cfg.injection_steps if cfg.injection_steps is not None else (
            cfg.injection_small if share < cfg.small_region else cfg.injection_large)
        n_inject = min(n_inject, cfg.steps)
        inversion = self.editor.invert(image, source_prompt, steps=cfg.steps, guidance=cfg.inversion_guidance,
                                       feature_steps=n_inject)
        trajectory = [self.editor.feature_injection(n_inject),
                      self.editor.velocity_blend(tokens_mask, cfg.blend_start, cfg.stop), *controls]
        report = GuardReport(regions, share, n_inject, (cfg.blend_start, cfg.stop), cfg.adversarial,
                             mask=blurred, mask_tokens=tokens_mask)
        first = cfg.steps - cfg.adv_steps
        recorder = TrajectoryRecorder(first)
        clean_tokens = self.editor.sample_tokens(inversion, prompt, controls=[*trajectory, recorder],
                                                 guidance=cfg.guidance, seed=seed)
        with torch.no_grad():
            clean = self.editor.decode_tokens(clean_tokens, height, width)
        report.clean = clean.detach().to(image.device, image.dtype)
        if not cfg.adversarial or cfg.adv_steps == 0 or cfg.iterations == 0:
            report.seconds = time.perf_counter() - started
            return report.clean.clone(), report
        device = clean.device
        with torch.no_grad():
            reference = self.embed(image.to(device), faces)
        def objective(images: torch.Tensor, clean_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``(L_id, L_perc)`` for decoded images [1,3,H,W]; ``L_id`` averaged over faces and face models."""
            l_id = self.identity_loss(images, faces, reference, target_embeddings)
            return l_id, self.perceptual(images, clean_images).mean()

        guard = LatentGuard(self.editor, cfg, objective=objective, clean=recorder, height=height, width=width)
        tokens = self.editor.sample_tokens(inversion, prompt, controls=[*trajectory, guard],
                                           guidance=cfg.guidance, seed=seed)
        with torch.no_grad():
            out = self.editor.decode_tokens(tokens, height, width)
        report.history, report.final = guard.history, guard.final
        report.seconds = time.perf_counter() - started
        return out.detach().to(image.device, image.dtype), report


def protect(editor: SamplingEditor, image: torch.Tensor, faces: Sequence[Face], prompt: str, *,
            source_prompt: str = "", seed: int | None = None, face_models: Sequence[Any] = (),
            target_embeddings: list[torch.Tensor] | None = None, mask: torch.Tensor | None = None,
            face_parser: Any = None, parts: Parts | None = None, run: RunConfig | None = None,
            **options: Any) -> tuple[torch.Tensor, GuardReport]:
    """One-call form: ``FluxGuard(run, editor=..., face_models=..., face_parser=..., **options).protect(image,
    faces, prompt, ...)``. Without ``face_parser`` and ``mask`` the ``landmarks`` parser is built by ``parts``
    (an engine's, ``engine.parts``), so a disabled parser plugin stays disabled."""
    if face_parser is None and mask is None:
        if parts is None:
            raise CapabilityError("flux-guard needs a face parser, a mask, or an engine's parts (parts=engine.parts) "
                                  "to build the landmarks parser")
        face_parser = parts.build("face_parser", "landmarks", run or RunConfig())
    guard = FluxGuard(run, editor=editor, face_models=face_models, face_parser=face_parser, **options)
    return guard.protect(image, faces, prompt, source_prompt=source_prompt, seed=seed,
                         target_embeddings=target_embeddings, mask=mask)


@hookimpl
def guardkit_register_edit_methods(register: Any) -> None:
    register("flux-guard", FluxGuard,
             summary="Flux-Guard: FLUX.1 text editing with trajectory control + latent adversarial "
                     "optimisation against face recognition (dodging or impersonation)",
             weights=backbone_weights())
