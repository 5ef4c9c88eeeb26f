"""Reading photos safely: :func:`load_rgb` turns any reasonable photo into an ``HxWx3`` ``uint8`` RGB array,
upright (EXIF orientation applied), every colour mode converted sensibly. It refuses truncated, corrupt,
empty and oversized files with one clear :class:`~guardkit.errors.ImageError` line instead of silently
returning half a picture. Only stdlib, numpy and Pillow are used here.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from guardkit.errors import ImageError

MAX_PIXELS: int = 50_000_000
"""Largest ``width * height`` :func:`load_rgb` accepts by default (decompression-bomb bound)."""

# Formats Pillow is allowed to identify (JPEG also covers multi-picture MPO files from cameras).
# Keeping to ordinary raster formats means a renamed EPS/PSD/ICO never reaches a decoder (or
# Ghostscript) that has no business here.
_WANTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "PPM")


def allowed_formats() -> tuple[str, ...]:
    """The wanted formats this Pillow build can open (e.g. WEBP may be compiled out)."""
    Image.init()
    return tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)


# Errors Pillow raises for truncated or corrupt data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


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
def open_decoded(path: Path, max_pixels: int) -> Iterator[Image.Image]:
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
                img = stack.enter_context(Image.open(path, formats=allowed_formats()))
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
    with open_decoded(path, max_pixels) as img:
        upright = _apply_exif_orientation(img)
        return _to_rgb_array(upright, path)



def animated_frames(path: Path) -> int:
    """How many frames ``path`` holds when it is an animated image (GIF, APNG, WebP), else 1.

    :func:`load_rgb` reads the first frame; callers say so in one line (``guardkit run`` protects the
    first frame only and writes a still image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=allowed_formats())
        with img:
            if img.format in ("GIF", "PNG", "WEBP") and getattr(img, "is_animated", False):
                return int(getattr(img, "n_frames", 1))
    except (*_DECODE_ERRORS, Image.DecompressionBombError, UnidentifiedImageError):
        return 1
    return 1


_ORIENTATION = 0x0112
_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def upright_size(path: Path, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of ``path`` as :func:`load_rgb` returns it (EXIF orientation applied). Raises
    :class:`ImageError` naming the file when it cannot be opened or has more than ``max_pixels`` pixels (checked
    from the header, before anything is decoded: a PNG's EXIF may follow its pixels, and reading it decodes them)."""
    path = Path(path)
    _check_readable_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=allowed_formats()) as img:
                width, height = img.size
                _check_pixel_count(path, width, height, max_pixels)
                try:
                    turned = img.getexif().get(_ORIENTATION) in _TURNED
                except (*_DECODE_ERRORS, TypeError, KeyError):
                    turned = False
    except (*_DECODE_ERRORS, Image.DecompressionBombError, UnidentifiedImageError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    return (height, width) if turned else (width, height)
