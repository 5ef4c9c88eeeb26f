"""Reading and writing photos safely.

* :func:`load_rgb` turns any reasonable photo into an ``HxWx3`` ``uint8`` RGB array, applying
  EXIF orientation and converting every colour mode sensibly. It refuses truncated, corrupt,
  empty and oversized files with one clear :class:`~guardkit.errors.ImageError` line instead
  of silently returning half a picture.
* :func:`collect_inputs` and :func:`plan_outputs` turn the user's command-line paths into a
  deterministic ``input -> output`` plan that never overwrites an input; with a ``failures`` list,
  bad paths (missing, broken links, folders named like photos) are reported there, not raised.
* :func:`save_image` writes atomically (temp file + fsync + rename) and strips all metadata
  (EXIF, GPS, XMP, comments, text chunks) unless asked to keep the colour profile.
* :func:`is_done` lets a re-run skip photos whose output is already complete.

Only stdlib, numpy and Pillow are used here; tensors are made elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from guardkit.errors import ConfigError, ImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "animated_frames",
    "collect_inputs",
    "is_done",
    "load_rgb",
    "output_path_for",
    "plan_outputs",
    "save_image",
]

MAX_PIXELS: int = 50_000_000
"""Largest ``width * height`` :func:`load_rgb` accepts by default (decompression-bomb bound)."""

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
"""Suffixes (lower case) that :func:`collect_inputs` picks up from a folder."""

# Formats Pillow is allowed to identify (JPEG also covers multi-picture MPO files from cameras).
# Keeping to ordinary raster formats means a renamed EPS/PSD/ICO never reaches a decoder (or
# Ghostscript) that has no business here.
_WANTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "PPM")


def _allowed_formats() -> tuple[str, ...]:
    """The wanted formats this Pillow build can open (e.g. WEBP may be compiled out)."""
    Image.init()
    return tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)


_OUTPUT_TAG = ".protected"
_FORMAT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}

# Errors Pillow raises for truncated or corrupt data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make Pillow raise on truncated data even if another library switched that off."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_readable_file(path: Path) -> None:
    """Raise ImageError unless ``path`` is an existing, non-empty regular file."""
    try:
        if not path.exists():
            raise ImageError(f"{path}: file not found")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file")
        if not path.is_file():
            raise ImageError(f"{path}: is not a regular file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: file is empty (0 bytes)")
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc


def _check_pixel_count(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Raise ImageError for a zero-size image or one larger than ``max_pixels``."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: image is {width}x{height} = {width * height:,} pixels, "
            f"more than the limit of {max_pixels:,} (possible decompression bomb)"
        )


@contextlib.contextmanager
def _open_decoded(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """Open ``path``, check its size from the header, fully decode frame 0 and yield it.

    Every failure becomes an :class:`ImageError` naming ``path``.
    """
    path = Path(path)
    _check_readable_file(path)
    with contextlib.ExitStack() as stack:
        try:
            with warnings.catch_warnings():
                # Pillow warns above its own (global) limit; our per-call limit is checked below.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = stack.enter_context(Image.open(path, formats=_allowed_formats()))
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: image is too large to open safely ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(
                f"{path}: not a readable image (unsupported format or corrupt header)"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{path}: image header is corrupt ({exc})") from exc

        # Header only so far: refuse huge images before any pixel memory is allocated.
        _check_pixel_count(path, img.width, img.height, max_pixels)
        try:
            # Image.open leaves animated images (GIF, APNG, WebP, MPO) on frame 0.
            with _strict_decoding():
                img.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: image is too large to open safely ({exc})") from exc
        except MemoryError as exc:
            raise ImageError(f"{path}: not enough memory to decode this image") from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{path}: image data is truncated or corrupt ({exc})") from exc
        if img.format == "PNG":
            _verify_png_chunks(path)
        yield img


def _verify_png_chunks(path: Path) -> None:
    """Check every PNG chunk's CRC up to IEND.

    Pillow stops reading once it has all rows, so a PNG cut off after its last row (e.g. a
    crashed writer) would otherwise load silently.
    """
    try:
        with Image.open(path, formats=("PNG",)) as png:
            png.verify()
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{path}: image data is truncated or corrupt ({exc})") from exc


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip according to the EXIF orientation tag; unreadable EXIF leaves it as is."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # Pillow warns about corrupt EXIF; not our user's problem
            return ImageOps.exif_transpose(img)
    except (*_DECODE_ERRORS, TypeError, KeyError):
        # Broken metadata must not make a decodable photo unusable.
        return img


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 2-D integer/float grayscale array to uint8 without clipping the range."""
    values = values.astype(np.float64, copy=False)
    if mode.startswith("I;16"):
        scaled = values / 257.0  # 0..65535 -> 0..255 exactly
    else:
        finite = values[np.isfinite(values)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0  # float image in 0..1
        elif lo >= 0.0 and hi <= 255.0 and mode == "F":
            scaled = values  # float image already in 0..255
        elif lo >= 0.0 and hi <= 65535.0:
            scaled = values / 257.0  # "I" from a 16-bit source (or a float image in 16-bit range)
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))  # anything else: stretch to 0..255
        else:
            scaled = np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info


def _to_rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded image of any mode into a fresh HxWx3 uint8 RGB array."""
    mode = img.mode
    if mode == "RGB":
        rgb = img
    elif mode.startswith("I;16") or mode in ("I", "F"):
        gray = _gray_to_uint8(np.asarray(img), mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    elif _has_transparency(img):
        # Composite on white: transparent areas become white, not black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        try:
            rgb = img.convert("RGB")  # 1, L, P, CMYK (no ICC), YCbCr, LAB, HSV, ...
        except (ValueError, OSError) as exc:
            raise ImageError(f"{path}: unsupported colour mode {mode!r}") from exc
    array = np.array(rgb, dtype=np.uint8)  # copy: independent of the closed file
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"{path}: unsupported colour mode {mode!r}")
    return array


def load_rgb(path: Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a photo as an ``HxWx3`` ``uint8`` RGB array, upright as the camera meant it.

    The EXIF orientation is applied. Grayscale, bilevel, palette, CMYK, YCbCr, 16-bit and
    float images are converted (16-bit scaled, not clipped); transparent pixels are
    composited on white. Animated images give their first frame.

    Raises :class:`ImageError` (naming the file) for a missing file, a folder, an empty or
    non-image file, truncated or corrupt data, a zero-size image, or one with more than
    ``max_pixels`` pixels (checked from the header, before decoding).
    """
    path = Path(path)
    with _open_decoded(path, max_pixels) as img:
        upright = _apply_exif_orientation(img)
        return _to_rgb_array(upright, path)


# ---------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------


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


def animated_frames(path: Path) -> int:
    """How many frames ``path`` holds when it is an animated image (GIF, APNG, WebP), else 1.

    :func:`load_rgb` reads the first frame; callers say so in one line (``guardkit run`` protects the
    first frame only and writes a still image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=_allowed_formats())
        with img:
            if img.format in ("GIF", "PNG", "WEBP") and getattr(img, "is_animated", False):
                return int(getattr(img, "n_frames", 1))
    except (*_DECODE_ERRORS, Image.DecompressionBombError, UnidentifiedImageError):
        return 1
    return 1


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


def _same_file(a: Path, b: Path) -> bool:
    if _identity(a) == _identity(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def plan_outputs(srcs: Sequence[Path], out_dir: Path, fmt: str = "png") -> dict[Path, Path]:
    """Map each input to a unique output path in ``out_dir``, deterministically.

    Inputs whose default names (:func:`output_path_for`) are unique keep them. Inputs whose
    default names clash (``a.jpg`` + ``a.png``, or ``x/a.jpg`` + ``y/a.jpg``) all get the
    original suffix kept: ``a.jpg.protected.png``; if that still clashes, a counter is added
    (``a-2.jpg.protected.png``) in input order. Names are compared case-insensitively so the
    plan is also safe on macOS/Windows file systems.

    Raises :class:`ImageError` if any output would be (resolve to) one of the inputs:
    an input is never overwritten.
    """
    out_dir = Path(out_dir)
    suffix = _output_suffix(fmt)
    sources = list(dict.fromkeys(Path(s) for s in srcs))
    defaults = {s: output_path_for(s, out_dir, fmt=fmt) for s in sources}
    counts = Counter(p.name.casefold() for p in defaults.values())

    plan: dict[Path, Path] = {}
    taken: set[str] = set()
    for src in sources:
        if counts[defaults[src].name.casefold()] == 1:
            plan[src] = defaults[src]
            taken.add(defaults[src].name.casefold())
    for src in sources:
        if src in plan:
            continue
        candidate = out_dir / f"{src.name}{_OUTPUT_TAG}{suffix}"
        n = 2
        while candidate.name.casefold() in taken:
            candidate = out_dir / f"{src.stem}-{n}{src.suffix}{_OUTPUT_TAG}{suffix}"
            n += 1
        plan[src] = candidate
        taken.add(candidate.name.casefold())

    for src in sources:
        out = plan[src]
        for other in sources:
            if _same_file(out, other):
                raise ImageError(
                    f"{src}: output {out} would overwrite the input file {other}; "
                    "choose a different output folder"
                )
    return {src: plan[src] for src in sources}


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _check_array(array: object, path: Path) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ImageError(f"{path}: cannot save: expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(
            f"{path}: cannot save: expected an HxWx3 uint8 array, "
            f"got shape {tuple(array.shape)} dtype {array.dtype}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{path}: cannot save an empty image {tuple(array.shape)}")
    return np.ascontiguousarray(array)


def _source_icc_profile(source_path: Path | None) -> bytes | None:
    """The ICC profile of ``source_path`` (header read only), or None."""
    if source_path is None:
        return None
    try:
        with Image.open(source_path, formats=_allowed_formats()) as src:
            icc = src.info.get("icc_profile")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{source_path}: cannot read its colour profile ({exc})") from exc
    return icc if isinstance(icc, bytes) and icc else None


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort; not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_image(
    array: np.ndarray,
    path: Path,
    *,
    fmt: str = "png",
    jpeg_quality: int = 95,
    keep_metadata: bool = False,
    source_path: Path | None = None,
) -> None:
    """Write an ``HxWx3`` ``uint8`` RGB array to ``path`` atomically.

    The image is written to a hidden temp file in the same folder, fsynced, then renamed over
    ``path``; on any failure the temp file is removed and ``path`` is untouched. The folder is
    created if needed. Nothing from the source carries over by default (no EXIF, GPS, XMP,
    comments, text chunks or ICC profile): the file is built fresh from the pixels. With
    ``keep_metadata=True`` only the ICC colour profile of ``source_path`` is copied. JPEG is
    written with 4:4:4 chroma (no subsampling) at ``jpeg_quality``.
    """
    path = Path(path)
    pil_format = _PIL_FORMAT.get(fmt.lower()) if isinstance(fmt, str) else None
    if pil_format is None:
        raise ConfigError(f"unknown output format {fmt!r}; use 'png' or 'jpeg'")
    if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality must be an integer from 1 to 100, got {jpeg_quality!r}")
    pixels = _check_array(array, path)
    if source_path is not None and _same_file(path, Path(source_path)):
        raise ImageError(f"{path}: refusing to overwrite the input photo")

    options: dict[str, object] = {}
    if pil_format == "JPEG":
        options.update(quality=jpeg_quality, subsampling=0)
    else:
        options.update(compress_level=6)
    if keep_metadata:
        icc = _source_icc_profile(source_path)
        if icc is not None:
            options["icc_profile"] = icc

    image = Image.fromarray(pixels)  # fresh image: empty .info, nothing inherited
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"{folder}: cannot create output folder ({exc.strerror or exc})") from exc

    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            delete=False, dir=folder, prefix=f".{path.name}.", suffix=".tmp"
        ) as tmp:
            tmp_name = tmp.name
            image.save(tmp, format=pil_format, **options)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile is created 0600; give the output the permissions of a normal file.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise ImageError(f"{path}: cannot write image ({exc.strerror or exc})") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    _fsync_dir(folder)


def is_done(output: Path, *, max_pixels: int = MAX_PIXELS) -> bool:
    """True when ``output`` exists, is non-empty and fully decodes as an image.

    A half-written, truncated or corrupt output returns False so that a re-run redoes it.
    Pass the same ``max_pixels`` as to :func:`load_rgb` if you raised it.
    """
    output = Path(output)
    try:
        with _open_decoded(output, max_pixels):
            return True
    except ImageError:
        return False
