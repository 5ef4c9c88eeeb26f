"""Process-wide torch settings for the length of a run, put back afterwards.

torch keeps its intra-op thread count, cuDNN's autotuner and determinism flags and the float32 matmul
precision per process: a library that sets them for one run would change them for everything else the
caller does afterwards (and for the next test). ``torch_settings`` sets them and restores what was
there before, on return or on error::

    with torch_settings(threads=2):
        protect(...)

    @torch_settings()          # as a decorator: whatever the call sets (``set_torch``) is restored
    def protect(...): ...

The cuDNN flags and the matmul precision are the process's (the thread count, on OpenMP builds, is also
kept per thread). Blocks nested in one thread restore in turn; blocks
that overlap in several threads (the ``guardkit serve`` workers, which all use one ``threads``) leave the
settings alone until the last of them ends, which restores what was there before the first began.
Flush-to-zero of denormals (``torch.set_flush_denormal``) is left out: torch cannot report it, so
it could not be restored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

from guardkit.errors import ConfigError

MATMUL_PRECISIONS = ("highest", "high", "medium")


@dataclass(frozen=True)
class TorchSettings:
    """A snapshot of the process-wide settings ``torch_settings`` manages."""

    threads: int
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    matmul_precision: str

    @classmethod
    def current(cls) -> TorchSettings:
        import torch

        return cls(threads=torch.get_num_threads(), cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                   cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
                   matmul_precision=torch.get_float32_matmul_precision())


def set_torch(*, threads: int | None = None, cudnn_benchmark: bool | None = None,
              cudnn_deterministic: bool | None = None, matmul_precision: str | None = None) -> None:
    """Set the given settings (``None``: left as they are). Prefer ``torch_settings``, which restores them."""
    import torch

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        if threads != torch.get_num_threads():  # setting it rebuilds the thread pool: only on a change
            torch.set_num_threads(threads)
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    if cudnn_deterministic is not None:
        torch.backends.cudnn.deterministic = cudnn_deterministic
    if matmul_precision is not None:
        if matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"matmul precision must be one of {', '.join(MATMUL_PRECISIONS)}, "
                              f"got {matmul_precision!r}")
        torch.set_float32_matmul_precision(matmul_precision)


class _Blocks:
    """Which ``torch_settings`` blocks are open, over all threads (the settings they guard are process-wide)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.before_first: TorchSettings | None = None
        self.local = threading.local()

    def enter(self) -> TorchSettings:
        with self.lock:
            saved = TorchSettings.current()
            if self.open == 0:
                self.before_first = saved
            self.open += 1
            self.local.depth = getattr(self.local, "depth", 0) + 1
            return saved

    def leave(self, saved: TorchSettings) -> None:
        with self.lock:
            self.open -= 1
            self.local.depth -= 1
            if self.open == 0 and self.before_first is not None:
                _restore(self.before_first)
            elif self.local.depth > 0:  # nested in this thread: back to the enclosing block's settings
                _restore(saved)
            # else another thread's block is still open: its settings stay until the last one ends


_BLOCKS = _Blocks()


def _restore(saved: TorchSettings) -> None:
    set_torch(**{f.name: getattr(saved, f.name) for f in fields(saved)})


@contextmanager
def torch_settings(*, threads: int | None = None, cudnn_benchmark: bool | None = None,
                   cudnn_deterministic: bool | None = None,
                   matmul_precision: str | None = None) -> Iterator[TorchSettings]:
    """Set the given settings inside the block (``None``: as they are) and restore every managed setting
    (also those changed inside the block through ``set_torch``) when it ends. Yields the settings in force."""
    saved = _BLOCKS.enter()
    try:
        set_torch(threads=threads, cudnn_benchmark=cudnn_benchmark, cudnn_deterministic=cudnn_deterministic,
                  matmul_precision=matmul_precision)
        yield TorchSettings.current()
    finally:
        _BLOCKS.leave(saved)
