"""How long one protection takes, and its peak memory, through the public ``Engine`` API (``guardkit bench``).

``protect_bench`` protects a photo the caller gives, as ``guardkit run`` does (find, protect, save), at its
own size or cropped / padded to other sizes around the face (the face keeping its size in pixels, so
that the cost is seen to follow the face region, not the photo), ``repeats`` times, and reports medians.
Speed is reported, never asserted; ``benchmarks/`` holds the research measurements (FaceLock's released
loop against guardkit's, the fast path per batch size).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, GuardkitError, NoFaceError

if TYPE_CHECKING:
    from guardkit.engine import Engine


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best there is
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory of a block: ``peak`` (bytes) and ``rise`` (peak minus the start).

    CUDA: ``torch.cuda.max_memory_allocated`` (reset at entry). CPU: the process's resident set size
    sampled every ``interval`` seconds by a thread (torch's CPU allocations are invisible to tracemalloc).
    """

    def __init__(self, device: Any = "cpu", interval: float = 0.01) -> None:
        import torch

        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def rise(self) -> int:
        return max(self.peak - self.start, 0)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def padded_photo(image: np.ndarray, megapixels: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """``image`` (H,W,3 uint8) cropped or padded (a border of its mean colour) around its centre to about
    ``megapixels`` with the same aspect ratio, the face keeping its size in pixels. A crop is centred
    on ``centre`` (x, y: the face; default the photo's centre), kept inside the photo."""
    h, w = image.shape[:2]
    k = (megapixels * 1e6 / (h * w)) ** 0.5
    th, tw = max(round(h * k), 16), max(round(w * k), 16)
    if k < 1:  # crop around the face
        cx, cy = centre if centre is not None else (w / 2, h / 2)
        x0 = int(min(max(cx - tw / 2, 0), w - tw))
        y0 = int(min(max(cy - th / 2, 0), h - th))
        return np.ascontiguousarray(image[y0:y0 + th, x0:x0 + tw])
    py, px = th - h, tw - w
    out = np.empty((th, tw, 3), dtype=image.dtype)
    out[:] = image.reshape(-1, 3).mean(axis=0).round().astype(image.dtype)  # a flat border: no new face
    out[py // 2:py // 2 + h, px // 2:px // 2 + w] = image
    return out


@dataclass(frozen=True)
class BenchRow:
    """One photo size: medians over the repeats. ``seconds``: one ``Engine.protect`` call (parts built and
    loaded, faces found, protected, saved); ``protect_seconds``: the engine's own time for the photo."""

    size: str
    megapixels: float
    faces: int
    seconds: float
    protect_seconds: float
    peak_mb: float
    rise_mb: float
    steps: int
    threads: int
    repeats: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def protect_bench(photo: str | Path, *, engine: Engine | None = None, method: str | None = None,
                  face_model: str | Sequence[str] | None = None, strength: str | None = None,
                  steps: int | None = None, device: str = "cpu", threads: int | None = None,
                  megapixels: Sequence[float] = (0,), repeats: int = 3,
                  log: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Time ``engine.protect`` on ``photo`` at each size in ``megapixels`` (0: the photo as it is), after one
    untimed run (imports, weights read from disk); one ``BenchRow`` per size."""
    import torch

    from guardkit.engine import DEFAULT_METHOD, Engine
    from guardkit.imageio import load_rgb, save_image
    from guardkit.torch_settings import torch_settings

    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    log = log or (lambda text: None)
    method = method or DEFAULT_METHOD
    photo = Path(photo)
    image = load_rgb(photo)
    engine = engine or Engine()
    base = RunConfig(device=device, threads=threads)
    run, options = engine.resolve_strength(method, base, strength, {}, steps=steps, explicit_run=False)
    kwargs: dict[str, Any] = dict(method=method, face_model=face_model, run=run, options=options, resume=False)
    rows: list[BenchRow] = []
    with torch_settings(threads=threads), tempfile.TemporaryDirectory(prefix="guardkit-bench-") as tmp:
        centre = _face_centre(engine, photo, image, kwargs)
        for i, mp in enumerate(megapixels):
            sized = image if mp <= 0 else padded_photo(image, mp, centre)
            path = Path(tmp) / f"photo_{sized.shape[1]}x{sized.shape[0]}.png"
            save_image(np.ascontiguousarray(sized), path)
            if i == 0:
                log("warm-up run (untimed)")
                _protect_one(engine, path, Path(tmp) / "out", kwargs)
            totals, protects, faces = [], [], 0
            with PeakMemory(run.torch_device()) as memory:
                for _ in range(repeats):
                    started = time.perf_counter()
                    result = _protect_one(engine, path, Path(tmp) / "out", kwargs)
                    totals.append(time.perf_counter() - started)
                    protects.append(result.seconds)
                    faces = result.faces
            row = BenchRow(size=f"{sized.shape[1]}x{sized.shape[0]}", megapixels=sized.shape[0] * sized.shape[1] / 1e6,
                           faces=faces, seconds=statistics.median(totals), protect_seconds=statistics.median(protects),
                           peak_mb=memory.peak / 2**20, rise_mb=memory.rise / 2**20, steps=run.budget.steps,
                           threads=torch.get_num_threads(), repeats=repeats)
            log(f"{row.size:>11} {row.megapixels:6.2f} MP  {row.seconds:6.2f} s  (protect {row.protect_seconds:.2f} s)"
                f"  peak {row.peak_mb:.0f} MB (+{row.rise_mb:.0f})")
            rows.append(row)
    return rows


def _face_centre(engine: Engine, photo: Path, image: np.ndarray, kwargs: dict[str, Any]) -> tuple[float, float]:
    """The first face's centre, found as the protection finds it (also loads its parts once, untimed)."""
    built = engine.build_method(kwargs["method"], kwargs["run"], face_model=kwargs["face_model"],
                                options=kwargs["options"])
    if not built.members:  # a method without face models protects the whole photo
        return image.shape[1] / 2, image.shape[0] / 2
    found = built.find_faces(image, photo)
    if not found:
        raise NoFaceError(f"{photo}: no face found (guardkit bench needs a photo with a face)")
    box = found[0].box
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _protect_one(engine: Engine, path: Path, out: Path, kwargs: dict[str, Any]) -> Any:
    result = engine.protect([path], output_dir=out, **kwargs).photos[0]
    if result.status != "protected":
        raise GuardkitError(f"{path.name}: {result.error or result.status}")
    return result


def bench_table(rows: Sequence[BenchRow]) -> str:
    """Plain-text table of ``protect_bench`` rows."""
    head = f"{'size':>11} {'MP':>6} {'faces':>5} {'s total':>8} {'s protect':>9} {'peak MB':>8} {'rise MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.size:>11} {r.megapixels:6.2f} {r.faces:5d} {r.seconds:8.2f} "
                     f"{r.protect_seconds:9.2f} {r.peak_mb:8.0f} {r.rise_mb:8.0f}")
    return "\n".join(lines)
