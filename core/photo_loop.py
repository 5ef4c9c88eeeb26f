"""The one photo loop of ``guardkit run``, ``edit`` and ``eval`` (``Engine.protect``, ``Engine.edit``,
``Engine.evaluate``).

```python
inputs = gather(["photos/", "me.jpg"], output_dir="out/")       # collect and plan outputs (never over an input)
loop = PhotoLoop(inputs, PhotoResult, expected_size=upright_size)
loop.start()                                                    # bad paths: failed photos, never a stop
loop.run(load, process, keep=keep)                              # resume, load, find, process, save atomically
loop.results                                                    # one result per input, in input order
```

What every job shares lives here once: collecting the inputs; resuming (a photo whose output its record
says this photo made under these settings, and which fully decodes at the size the run would write, is
skipped; an output another photo made under the same name is kept, and this photo gets another name);
loading each photo and finding its faces; recording a failure per photo in one line that names the file and
the problem (a bad photo never stops the batch); projecting a method's result onto the budget, with a
finiteness check and 8-bit quantisation (:func:`to_pixels`: never trust a method); and writing each output
atomically, metadata stripped, with its record (``image_save.record_output``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from guardkit.config import Budget
from guardkit.errors import GuardkitError, ImageError
from guardkit.image_paths import IMAGE_SUFFIXES, collect_inputs, plan_outputs
from guardkit.image_save import is_done, made_by, record_output, recorded_source, save_image
from guardkit.types import Face

#: what one photo may fail with: recorded for that photo, the batch goes on (torch raises RuntimeError and
#: ValueError for shapes and memory); anything else is a bug and stops the run
PHOTO_ERRORS: tuple[type[BaseException], ...] = (GuardkitError, RuntimeError, ValueError)

class PhotoRecord(Protocol):
    """What the loop needs of a job's per-photo result (``PhotoResult``, ``EditResult``)."""

    source: Path
    status: str
    output: Path | None
    error: str


R = TypeVar("R", bound=PhotoRecord)


@dataclass
class Photo:
    """One loaded photo: its path, its pixels (HxWx3 uint8, as the job prepared them), its faces and a note
    worth one line (an animated image's first frame, ...)."""

    path: Path
    image: np.ndarray
    faces: list[Face] = field(default_factory=list)
    note: str = ""


@dataclass
class Inputs:
    """The photos of a run (``paths``), the bad paths with their one-line reasons (``bad``) and, with an
    output folder, each photo's output (``outputs``)."""

    paths: list[Path]
    bad: list[tuple[Path, str]]
    outputs: dict[Path, Path] = field(default_factory=dict)


def gather(inputs: Sequence[str | Path], *, output_dir: str | Path | None = None, fmt: str = "png",
           required: bool = True) -> Inputs:
    """Collect photo files and folders (bad paths recorded, not raised) and plan their outputs in
    ``output_dir``, passing over names that hold another photo's output (:func:`holds_another_photo`).
    ``required``: nothing at all to read (no photo, no bad path) is a one-line ImageError."""
    bad: list[tuple[Path, str]] = []
    paths = collect_inputs([Path(p) for p in inputs], bad)
    if required and not paths and not bad:
        raise ImageError(f"no photos found in {', '.join(str(p) for p in inputs)} "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    outputs = plan_outputs(paths, Path(output_dir), fmt, held=holds_another_photo) if output_dir is not None else {}
    return Inputs(paths, bad, outputs)


def holds_another_photo(source: Path, output: Path) -> bool:
    """``output`` exists and its record does not say ``source`` made it: another photo's output under this
    name, or a file that is not ours to overwrite."""
    return output.exists() and not recorded_source(output, source)


def failure_line(path: Path | str, error: BaseException | str) -> str:
    """One line naming the photo and the problem: the error's first line, prefixed with ``path`` unless it
    names it already; an error that is not guardkit's also says its type."""
    if isinstance(error, BaseException) and not isinstance(error, GuardkitError):
        first = (str(error).strip().splitlines() or [""])[0]
        message = f"{type(error).__name__}: {first}" if first else type(error).__name__
    else:
        message = (str(error).strip().splitlines() or ["failed"])[0]
    return message if str(path) in message else f"{path}: {message}"


def to_pixels(images: Any, clean: Any = None, budget: Budget | None = None, *, what: str = "the protection") -> Any:
    """``images`` ([B,3,H,W], nominally in [0, 1]) as the uint8 [B,3,H,W] that will be written. Never trust
    a method: with ``clean`` and ``budget`` the result is projected onto the budget's ball around ``clean``
    and [0, 1], then held inside it on the 8-bit grid (L-inf: within ``floor(eps * 255)`` levels of the clean
    pixels, whatever eps; L2: rounded, or truncated towards the clean pixels where rounding would leave the
    ball); non-finite pixels are an error (naming ``what``), never written; so what is reported is what is
    saved, and inside the budget."""
    import torch

    from guardkit.attack import project

    x = images.detach().float()
    if not torch.isfinite(x).all():
        raise GuardkitError(f"{what} produced non-finite pixels")
    if clean is None:
        return torch.round(x.clamp(0, 1) * 255).to(torch.uint8)
    budget = budget or Budget()
    base = torch.round(clean.detach().float().clamp(0, 1) * 255)
    wanted = project(x, clean.detach().float(), budget).clamp(0, 1) * 255 - base  # in 8-bit levels
    delta = torch.round(wanted)
    if budget.norm == "linf":
        cap = math.floor(budget.eps * 255 + 1e-6)
        delta = delta.clamp(-cap, cap)
    else:
        over = delta.flatten(1).norm(dim=1) > budget.eps * 255
        delta = torch.where(over.view(-1, 1, 1, 1), torch.trunc(wanted), delta)
    return (base + delta).clamp(0, 255).to(torch.uint8)


def same_size_batches(photos: Iterable[Photo], size: int) -> Iterator[list[Photo]]:
    """Consecutive groups of at most ``size`` photos that share one shape (so they stack)."""
    groups: dict[tuple, list[Photo]] = {}
    for photo in photos:
        group = groups.setdefault(photo.image.shape, [])
        group.append(photo)
        if len(group) == size:
            yield groups.pop(photo.image.shape)
    yield from (g for g in groups.values() if g)


class PhotoLoop(Generic[R]):
    """Runs one job over ``inputs``, one result per input. ``result(path, status, output=..., error=...)``
    builds a result (``PhotoResult``, ``EditResult``); its status is ``failed``, ``skipped`` or what the job
    says. ``expected_size(path)``: the ``(width, height)`` the job writes for that input; with it, resume
    skips only outputs of that size (an output from another resolution is redone). ``settings``: what else
    decides the output (method, budget, seed, face models, ...), recorded beside each output; resume skips
    only an output that this photo made under equal settings."""

    def __init__(self, inputs: Inputs, result: Callable[..., R], *, fmt: str = "png", resume: bool = True,
                 expected_size: Callable[[Path], tuple[int, int]] | None = None,
                 on_start: Callable[[int], None] | None = None, on_photo: Callable[[R], None] | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.inputs, self.result, self.fmt, self.resume, self.settings = inputs, result, fmt, resume, settings
        self.expected_size, self.on_start, self.on_photo = expected_size, on_start, on_photo
        self._results: list[R] = []

    @property
    def results(self) -> list[R]:
        """Every result so far: bad paths first, then the photos in input order."""
        order = {path: i for i, path in enumerate(self.inputs.paths)}
        return sorted(self._results, key=lambda r: order.get(r.source, -1))

    def start(self) -> None:
        """Say how many photos there are and record each bad path as a failed photo."""
        if self.on_start:
            self.on_start(len(self.inputs.paths) + len(self.inputs.bad))
        for path, message in self.inputs.bad:
            self.record(self.result(path, "failed", error=message))

    def record(self, result: R) -> None:
        self._results.append(result)
        if self.on_photo:
            self.on_photo(result)

    def fail(self, path: Path, error: BaseException | str) -> None:
        self.record(self.result(path, "failed", error=failure_line(path, error)))

    def is_finished(self, path: Path) -> bool:
        """The photo's output exists, its record says this photo made it under :attr:`settings`, and it fully
        decodes at (with ``expected_size``) the size this run writes. Reads no input whose output is missing."""
        output = self.inputs.outputs.get(path)
        if output is None or not self.resume or not output.is_file() or not made_by(output, path, self.settings):
            return False
        try:
            size = self.expected_size(path) if self.expected_size else None
        except GuardkitError:  # the input cannot be read: not done; loading it names the problem
            return False
        return is_done(output, size=size)

    def photos(self, load: Callable[[Path], Photo]) -> Iterator[Photo]:
        """Each photo to do, loaded (with its faces) by ``load``, one at a time; a finished one is recorded
        as skipped, one that fails to load is recorded as failed."""
        for path in self.inputs.paths:
            if self.is_finished(path):
                self.record(self.result(path, "skipped", output=self.inputs.outputs[path]))
                continue
            try:
                photo = load(path)
            except PHOTO_ERRORS as exc:
                self.fail(path, exc)
                continue
            yield photo

    def deliver(self, result: R, pixels: np.ndarray, keep: Callable[[R, np.ndarray], None]) -> None:
        """Write ``pixels`` (HxWx3 uint8) atomically to the photo's output with its record (which photo and
        settings made it), or ``keep`` them in the result when the run has no output folder; then record the
        result (failed, in one line, if writing fails)."""
        output = self.inputs.outputs.get(result.source)
        if output is None:
            keep(result, pixels)
        else:
            try:
                save_image(pixels, output, fmt=self.fmt)
                record_output(output, result.source, self.settings)
                result.output = output
            except ImageError as exc:
                result.status, result.error = "failed", failure_line(result.source, exc)
        self.record(result)

    def run(self, load: Callable[[Path], Photo],
            process: Callable[[list[Photo]], Sequence[tuple[R, np.ndarray]]], *,
            keep: Callable[[R, np.ndarray], None], batch_size: int = 1) -> list[R]:
        """The whole loop: each batch of same-size photos goes through ``process`` (-> one ``(result, HxWx3
        uint8 pixels)`` per photo), which may fail the batch's photos (each then named in one line) or return a
        photo's result as failed (recorded, nothing written); every other result is delivered. Returns
        :attr:`results`."""
        for batch in same_size_batches(self.photos(load), batch_size):
            try:
                done = process(batch)
            except PHOTO_ERRORS as exc:
                for photo in batch:
                    self.fail(photo.path, exc)
                continue
            for result, pixels in done:
                if getattr(result, "status", "") == "failed":  # a photo the method could not protect: nothing written
                    self.record(result)
                else:
                    self.deliver(result, pixels, keep)
        return self.results
