"""Writing photos safely: :func:`save_image` writes atomically (temp file + fsync + rename) and strips all
metadata (EXIF, GPS, XMP, comments, text chunks) unless asked to keep the colour profile; :func:`is_done`
lets a re-run skip photos whose output is already complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from guardkit.errors import ConfigError, ImageError
from guardkit.image_paths import same_file
from guardkit.image_read import MAX_PIXELS, allowed_formats, open_decoded

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}


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
        with Image.open(source_path, formats=allowed_formats()) as src:
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
    if source_path is not None and same_file(path, Path(source_path)):
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


def is_done(output: Path, *, size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> bool:
    """True when ``output`` exists, is non-empty, fully decodes as an image and (with ``size``) is
    ``(width, height)`` pixels: an output that matches what the run would write.

    A half-written, truncated or corrupt output, or one of another size (an older run's at another
    resolution, another photo's under the same name), returns False so that a re-run redoes it.
    Pass the same ``max_pixels`` as to :func:`load_rgb` if you raised it.
    """
    output = Path(output)
    try:
        with open_decoded(output, max_pixels) as img:
            return size is None or tuple(img.size) == tuple(size)
    except ImageError:
        return False
