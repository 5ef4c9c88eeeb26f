"""The one photo loop of ``guardkit run``, ``edit`` and ``eval`` (``Engine.protect``, ``Engine.edit``,
``Engine.evaluate``).

```python
inputs = gather(["photos/", "me.jpg"], output_dir="out/")       # collect and plan outputs (never over an input)
loop = PhotoLoop(inputs, PhotoResult, expected_size=upright_size)
loop.start()                                                    # bad paths: failed photos, never a stop
loop.run(load, process, keep=keep)                              # resume, load, find, process, save atomically
loop.results                                                    # one result per input, in input order
```

What every job shares lives here once: collecting the inputs; resuming (a photo whose output exists,
fully decodes and has the size the run would write is skipped); loading each photo and finding its faces;
recording a failure per photo in one line that names the file and the problem (a bad photo never stops the
batch); projecting a method's result onto the budget, with a finiteness check and 8-bit quantisation
(:func:`to_pixels`: never trust a method); and writing each output atomically, metadata stripped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from guardkit.config import Budget
from guardkit.errors import GuardkitError, ImageError
from guardkit.image_paths import IMAGE_SUFFIXES, collect_inputs, plan_outputs
from guardkit.image_save import is_done, save_image
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
    ``output_dir``. ``required``: nothing at all to read (no photo, no bad path) is a one-line ImageError."""
    bad: list[tuple[Path, str]] = []
    paths = collect_inputs([Path(p) for p in inputs], bad)
    if required and not paths and not bad:
        raise ImageError(f"no photos found in {', '.join(str(p) for p in inputs)} "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    outputs = plan_outputs(paths, Path(output_dir), fmt) if output_dir is not None else {}
    return Inputs(paths, bad, outputs)


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
    and [0, 1]; non-finite pixels are an error (naming ``what``), never written; values are rounded to the
    8-bit grid, so what is reported is what is saved."""
    import torch

    from guardkit.attack import project

    x = images.detach().float()
    if not torch.isfinite(x).all():
        raise GuardkitError(f"{what} produced non-finite pixels")
    if clean is not None:
        x = project(x, clean.detach().float(), budget or Budget())
    return torch.round(x.clamp(0, 1) * 255).to(torch.uint8)


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
    skips only outputs of that size (an output from another resolution or another photo is redone)."""

    def __init__(self, inputs: Inputs, result: Callable[..., R], *, fmt: str = "png", resume: bool = True,
                 expected_size: Callable[[Path], tuple[int, int]] | None = None,
                 on_start: Callable[[int], None] | None = None, on_photo: Callable[[R], None] | None = None) -> None:
        self.inputs, self.result, self.fmt, self.resume = inputs, result, fmt, resume
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
        """The photo's output exists, fully decodes and (with ``expected_size``) has the size this run writes."""
        output = self.inputs.outputs.get(path)
        if output is None or not self.resume:
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
        """Write ``pixels`` (HxWx3 uint8) atomically to the photo's output, or ``keep`` them in the result
        when the run has no output folder; then record the result (failed, in one line, if writing fails)."""
        output = self.inputs.outputs.get(result.source)
        if output is None:
            keep(result, pixels)
        else:
            try:
                save_image(pixels, output, fmt=self.fmt)
                result.output = output
            except ImageError as exc:
                result.status, result.error = "failed", failure_line(result.source, exc)
        self.record(result)

    def run(self, load: Callable[[Path], Photo],
            process: Callable[[list[Photo]], Sequence[tuple[R, np.ndarray]]], *,
            keep: Callable[[R, np.ndarray], None], batch_size: int = 1) -> list[R]:
        """The whole loop: each batch of same-size photos goes through ``process`` (-> one ``(result, HxWx3
        uint8 pixels)`` per photo), which may fail the batch's photos (each then named in one line); every
        result is delivered. Returns :attr:`results`."""
        for batch in same_size_batches(self.photos(load), batch_size):
            try:
                done = process(batch)
            except PHOTO_ERRORS as exc:
                for photo in batch:
                    self.fail(photo.path, exc)
                continue
            for result, pixels in done:
                self.deliver(result, pixels, keep)
        return self.results
