"""Which photos a run reads and where their outputs go.

:func:`collect_inputs` and :func:`plan_outputs` turn the user's command-line paths into a deterministic
``input -> output`` plan that never overwrites an input; with a ``failures`` list, bad paths (missing,
broken links, folders named like photos) are reported there, not raised.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from guardkit.errors import ConfigError, ImageError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
"""Suffixes (lower case) that :func:`collect_inputs` picks up from a folder."""

_OUTPUT_TAG = ".protected"
_FORMAT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}


def _is_candidate_in_folder(path: Path) -> bool:
    """A folder entry worth looking at: named like an image, not hidden, not our own output.

    Whether it is a readable file is not asked here: a broken link or a sub-folder named like a
    photo is reported by :func:`collect_inputs`, not skipped in silence."""
    name = path.name
    if name.startswith("."):  # hidden files, macOS "._x.jpg" resource forks, our temp files
        return False
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    if path.stem.lower().endswith(_OUTPUT_TAG):  # a previous run's output written next to inputs
        return False
    return True


def _identity(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _why_not_a_photo(path: Path) -> str | None:
    """One line saying why ``path`` (named like a photo in a folder) cannot be one, or None."""
    try:
        if path.is_symlink() and not path.exists():
            return f"{path}: broken link (points to {os.readlink(path)}, which does not exist)"
        if path.is_dir():
            return f"{path}: is a folder, not an image file (folders inside folders are not walked)"
        if not path.is_file():
            return f"{path}: is not a regular file"
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror or exc})"
    return None


def collect_inputs(inputs: Sequence[Path], failures: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Expand the user's files and folders into the list of photos to process.

    Files are taken as given (whatever their suffix). Folders contribute their entries named like
    images (suffixes in :data:`IMAGE_SUFFIXES`, any case), non-recursively and sorted by name,
    skipping hidden files and earlier ``*.protected.*`` outputs. Duplicates (the same file named
    twice) are dropped, keeping the first. A folder with no images contributes nothing.

    A bad path (one that does not exist, a broken link, a sub-folder named like a photo, a folder
    that cannot be listed) raises :class:`ImageError` naming it, unless ``failures`` is given: then
    each bad path is appended to it as ``(path, one-line message)`` and the others are still
    collected, so that one typo never stops a batch (``guardkit run`` names it and exits 1).
    """
    found: list[Path] = []

    def bad(path: Path, message: str) -> None:
        if failures is None:
            raise ImageError(message)
        failures.append((path, message))

    for raw in inputs:
        item = Path(raw)
        try:
            if item.is_dir():
                entries = sorted(item.iterdir(), key=lambda p: (p.name.casefold(), p.name))
                for entry in entries:
                    if not _is_candidate_in_folder(entry):
                        continue
                    why = _why_not_a_photo(entry)
                    if why is None:
                        found.append(entry)
                    else:
                        bad(entry, why)
            elif item.exists():
                found.append(item)
            elif item.is_symlink():
                bad(item, f"{item}: broken link (points to {os.readlink(item)}, which does not exist)")
            else:
                bad(item, f"{item}: no such file or folder")
        except OSError as exc:
            bad(item, f"{item}: cannot read ({exc.strerror or exc})")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(_identity(path), path)
    return list(unique.values())



def _output_suffix(fmt: str) -> str:
    try:
        return _FORMAT_SUFFIX[fmt.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown output format {fmt!r}; use 'png' or 'jpeg'") from None


def output_path_for(src: Path, out_dir: Path, *, fmt: str = "png") -> Path:
    """The default output for ``src``: ``out_dir / "<stem>.protected.png"`` (``.jpg`` for jpeg).

    This does not look at other inputs; use :func:`plan_outputs` for a batch.
    """
    src = Path(src)
    return Path(out_dir) / f"{src.stem}{_OUTPUT_TAG}{_output_suffix(fmt)}"


def same_file(a: Path, b: Path) -> bool:
    if _identity(a) == _identity(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def plan_outputs(srcs: Sequence[Path], out_dir: Path, fmt: str = "png", *,
                 held: Callable[[Path, Path], bool] | None = None) -> dict[Path, Path]:
    """Map each input to a unique output path in ``out_dir``, deterministically.

    Inputs whose default names (:func:`output_path_for`) are unique keep them. Inputs whose
    default names clash (``a.jpg`` + ``a.png``, or ``x/a.jpg`` + ``y/a.jpg``) all get the
    original suffix kept: ``a.jpg.protected.png``; if that still clashes, a counter is added
    (``a-2.jpg.protected.png``) in input order. Names are compared case-insensitively so the
    plan is also safe on macOS/Windows file systems. ``held(src, output)``: True when ``output``
    already holds another photo's output (an earlier run's); such a name is passed over like a clash.

    Raises :class:`ImageError` if any output would be (resolve to) one of the inputs:
    an input is never overwritten.
    """
    out_dir = Path(out_dir)
    suffix = _output_suffix(fmt)
    sources = list(dict.fromkeys(Path(s) for s in srcs))
    defaults = {s: output_path_for(s, out_dir, fmt=fmt) for s in sources}
    counts = Counter(p.name.casefold() for p in defaults.values())

    def free(src: Path, candidate: Path) -> bool:
        return held is None or not held(src, candidate)

    plan: dict[Path, Path] = {}
    taken: set[str] = set()
    for src in sources:
        if counts[defaults[src].name.casefold()] == 1 and free(src, defaults[src]):
            plan[src] = defaults[src]
            taken.add(defaults[src].name.casefold())
    for src in sources:
        if src in plan:
            continue
        candidate = out_dir / f"{src.name}{_OUTPUT_TAG}{suffix}"
        n = 2
        while candidate.name.casefold() in taken or not free(src, candidate):
            candidate = out_dir / f"{src.stem}-{n}{src.suffix}{_OUTPUT_TAG}{suffix}"
            n += 1
        plan[src] = candidate
        taken.add(candidate.name.casefold())

    for src in sources:
        out = plan[src]
        for other in sources:
            if same_file(out, other):
                raise ImageError(
                    f"{src}: output {out} would overwrite the input file {other}; "
                    "choose a different output folder"
                )
    return {src: plan[src] for src in sources}
