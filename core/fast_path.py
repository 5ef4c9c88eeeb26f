"""The encoder loop's fast path (``LatentAttackConfig`` ``autocast``, ``channels_last``, ``compile``).

- ``autocast(device, mode)``: the per-step forward under ``torch.autocast`` ("none" | "bf16" | "fp16");
- ``ChannelsLast`` / ``set_layout``: the convolution modules of the parts (encoder VAE, face network,
  LPIPS) in NHWC;
- ``StepCompiler``: ``torch.compile`` of the per-step objective, one graph per set of active terms,
  falling back to eager (with a warning) where compiling fails. ``$GUARDKIT_COMPILE_BACKEND`` picks the
  backend (default ``inductor``; tests use ``aot_eager``).

What it gains is measured in ``benchmarks/`` (``bench_facelock.py``), never asserted in tests.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

AUTOCAST_MODES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, mode: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``mode`` ("bf16", "fp16") on ``device``'s type; a no-op for "none"."""
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {mode!r}")
    dtype = AUTOCAST_MODES[mode]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def modules_of(*parts: Any) -> list[torch.nn.Module]:
    """The torch modules behind guardkit parts: the part itself if it is one, else its ``vae``
    (encoders), ``net`` (face models) or ``module`` (LPIPS losses) attribute, when set."""
    found: list[torch.nn.Module] = []
    for part in parts:
        if isinstance(part, torch.nn.Module):
            found.append(part)
            continue
        for name in ("vae", "net", "module"):
            module = getattr(part, name, None)
            if isinstance(module, torch.nn.Module):
                found.append(module)
    return found


def set_layout(modules: Iterable[torch.nn.Module], channels_last: bool) -> None:
    """Every 4-D parameter of ``modules`` in ``channels_last`` or the default (contiguous) layout, in place;
    a module already in that layout is left alone (cheap: one parameter is looked at)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in modules:
        first = next((p for p in module.parameters() if p.ndim == 4), None)
        if first is not None and not first.is_contiguous(memory_format=fmt):
            module.to(memory_format=fmt)


class ChannelsLast:
    """Puts the parts' modules in ``torch.channels_last`` (in place); ``convert()`` may be called every
    step, as a loss can build its module on first use (and it costs a look at one parameter a module)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def convert(self) -> None:
        set_layout(modules_of(*self.parts), True)


def compile_backend() -> str:
    return os.environ.get("GUARDKIT_COMPILE_BACKEND", "inductor")


class StepCompiler:
    """``forward(x, names) -> Tensor[B]`` compiled once per ``names`` (the active terms).

    The first call of each graph also runs its backward (so a failure to compile either is caught
    here); on any failure the step warns once and runs eagerly from then on.
    """

    def __init__(self, forward: Callable[[torch.Tensor, frozenset], torch.Tensor], backend: str | None = None) -> None:
        self.forward = forward
        self.backend = backend or compile_backend()
        self.graphs: dict[frozenset, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.failed: str | None = None

    def _graph(self, names: frozenset) -> Callable[[torch.Tensor], torch.Tensor]:
        forward = self.forward

        def step(x: torch.Tensor) -> torch.Tensor:
            return forward(x, names)

        return torch.compile(step, backend=self.backend, dynamic=False)

    def __call__(self, x: torch.Tensor, names: frozenset) -> torch.Tensor:
        if self.failed is not None:
            return self.forward(x, names)
        first = names not in self.graphs
        try:
            if first:
                self.graphs[names] = self._graph(names)
            value = self.graphs[names](x)
            if first and x.requires_grad:  # compile the backward now, where its failure can be caught
                torch.autograd.grad(value.sum(), x, retain_graph=True)
            return value
        except Exception as exc:  # noqa: BLE001 - dynamo/inductor raise many types: any means "run eagerly"
            self.failed = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            warnings.warn(f"torch.compile of the per-step objective failed ({self.failed}); running eagerly",
                          RuntimeWarning, stacklevel=2)
            return self.forward(x, names)
