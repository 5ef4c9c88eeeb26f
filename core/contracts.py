"""Contracts between parts that plugins share: the sampling editor and its controls, and ``Parts``.

An *edit method* (Flux-Guard) is a set of controls over one sampling loop that an *editor* (``flux-edit``)
owns (see DESIGN.md). Both import this contract from here, never from each other:

- ``StepState``: one sampling step as a control sees it;
- ``Control`` (and the no-op ``ControlBase``): what the sampler calls at every step;
- ``SamplingEditor``: an editor that inverts a photo and samples it back under controls. It declares
  ``provides = (SAMPLING,)``; an edit method declares ``needs_editor = (SAMPLING,)``, and the engine checks
  the two (``check_editor``) before any weight loads;
- ``Parts``: what the engine hands a part that builds further parts by name (``needs_parts = True``), so
  those come from the engine's own registry (``--disable-plugin`` holds for them too). No plugin builds
  an ``Engine`` of its own.

This module stays free of torch at import time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from guardkit.errors import CapabilityError

if TYPE_CHECKING:
    import torch

    from guardkit.config import RunConfig

#: The editor capability "invert a photo and sample it back step by step under controls".
SAMPLING = "sampling"


class Parts(Protocol):
    """Builds parts by name from the registry of the engine that built the part holding it."""

    def build(self, kind: str, name: str, run: "RunConfig", **options: Any) -> Any:
        """The part ``name`` of ``kind`` (e.g. ``"face_model"``, ``"dlib"``) built with ``options``, not
        loaded. An unknown or disabled name is a one-line ``UnknownPartError``."""
        ...


class InversionRecord(Protocol):
    """What an editor's ``invert`` returns, as far as the contract needs: the photo's size and the step count.
    The rest (velocities, recorded features...) is the editor's own and read by the controls it offers."""

    height: int
    width: int

    @property
    def steps(self) -> int: ...

    def matching(self, sampling_index: int) -> int:
        """The inversion step spanning the same interval as sampling step ``sampling_index``."""
        ...


@dataclass
class StepState:
    """One sampling step, as controls see it.

    ``index`` runs 0..``num_steps``-1; the step goes from ``t`` to ``t_next`` (< t). ``latents`` are the
    tokens at ``t`` [B,N,C] (float32). ``evaluation``: which velocity evaluation ``after_velocity`` is seeing
    (0: at ``t``; 1: a second-order solver's midpoint, at ``t_eval``). ``value_injection``: set by a control in
    ``before_step`` to the editor's per-evaluation feature replacements for this step (``flux-edit``: one
    ``{single block: V}`` dict per evaluation). ``generator``: seeded from the sampling seed, for controls that
    need randomness.
    """

    index: int
    num_steps: int
    t: float
    t_next: float
    inversion: InversionRecord
    latents: "torch.Tensor"
    editor: "SamplingEditor"
    evaluation: int = 0
    t_eval: float = 0.0
    value_injection: tuple[dict[int, "torch.Tensor"], ...] | None = None
    generator: "torch.Generator | None" = None


@runtime_checkable
class Control(Protocol):
    """Something a sampling editor calls at every step; controls may keep state between calls.

    Per step: ``before_step(state)``; then, for each velocity evaluation (two per RF-Solver step),
    ``v = after_velocity(state, v)`` (``v``: the edit velocity ``dx/dt`` [B,N,C], float32); then
    ``latents = after_step(state, latents)`` with the step's result. Several controls chain in order.
    """

    def before_step(self, state: StepState) -> None: ...

    def after_velocity(self, state: StepState, v: "torch.Tensor") -> "torch.Tensor": ...

    def after_step(self, state: StepState, latents: "torch.Tensor") -> "torch.Tensor": ...


class ControlBase:
    """No-op ``Control``: subclass and override what you need."""

    def before_step(self, state: StepState) -> None:
        return None

    def after_velocity(self, state: StepState, v: "torch.Tensor") -> "torch.Tensor":
        return v

    def after_step(self, state: StepState, latents: "torch.Tensor") -> "torch.Tensor":
        return latents


@runtime_checkable
class SamplingEditor(Protocol):
    """An editor with ``provides`` containing ``SAMPLING``: inversion, controlled sampling, a differentiable
    decode, and the trajectory controls it offers (so edit methods depend on this contract, not on a module).
    Images are [B,3,H,W] in [0,1]; tokens are the editor's latent tokens [B,N,C]."""

    provides: ClassVar[tuple[str, ...]]

    def load(self) -> None: ...

    def invert(self, images: "torch.Tensor", source_prompt: str = "", *, steps: int = 28, guidance: float = 1.0,
               feature_steps: int | None = None) -> InversionRecord:
        """Integrate from the photo to noise under ``source_prompt``, keeping what the controls need."""
        ...

    def sample_tokens(self, inversion: InversionRecord, prompt: str, *, controls: Sequence[Control] = (),
                      guidance: float = 3.5, seed: int | None = None) -> "torch.Tensor":
        """Integrate back from the inversion's noise under ``prompt``, calling ``controls`` -> tokens."""
        ...

    def decode_tokens(self, tokens: "torch.Tensor", height: int, width: int) -> "torch.Tensor":
        """Tokens -> images [B,3,height,width] in [0,1]; differentiable (latent optimisation needs it)."""
        ...

    def feature_injection(self, steps: int) -> Control:
        """A control replacing the first ``steps`` sampling steps' features by the inversion's."""
        ...

    def velocity_blend(self, mask_tokens: "torch.Tensor", start: int, stop: int) -> Control:
        """A control mixing the edit velocity with the inversion's under ``mask_tokens`` for ``start..stop-1``."""
        ...

    def mask_to_tokens(self, mask: "torch.Tensor") -> "torch.Tensor":
        """An image mask [B,1,H,W] in [0,1] -> a token mask [B,N,1]."""
        ...


def check_editor(method: str, needs: Iterable[str], editor: str, provides: Iterable[str]) -> None:
    """A one-line ``CapabilityError`` when editor ``editor`` (providing ``provides``) lacks one of the
    capabilities edit method ``method`` ``needs``; run it before any weight loads."""
    given = set(provides)
    missing = [need for need in needs if need not in given]
    if missing:
        offered = ", ".join(sorted(given)) or "only a plain edit"
        raise CapabilityError(f"edit method {method!r} needs an editor with {', '.join(missing)} (invert, then "
                              f"sample under controls, as flux-edit); editor {editor!r} offers {offered}")
