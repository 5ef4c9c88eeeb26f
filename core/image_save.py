"""Writing photos safely: :func:`save_image` writes atomically (temp file + fsync + rename) and strips all
metadata (EXIF, GPS, XMP, comments, text chunks) unless asked to keep the colour profile; :func:`is_done`
lets a re-run skip photos whose output is already complete; :func:`as_saved` gives the pixels a format keeps.

Which photo and settings made an output is recorded beside it, never in it (the photo carries no metadata):
:func:`record_output` writes a small JSON record into the output folder's hidden ``.guardkit`` folder, with
the digests of the source and of the output; :func:`recorded_source` and :func:`made_by` read it back, so that
a re-run skips only its own outputs and never takes another photo's output under the same name for its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from guardkit.errors import ConfigError, ImageError
from guardkit.image_paths import same_file
from guardkit.image_read import MAX_PIXELS, allowed_formats, open_decoded

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}
RECORDS = ".guardkit"
"""The hidden folder of an output folder that records which source and settings made each output."""


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: setting the umask to read it races with other threads


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
    pil_format, options = _save_options(fmt, jpeg_quality)
    pixels = _check_array(array, path)
    if source_path is not None and same_file(path, Path(source_path)):
        raise ImageError(f"{path}: refusing to overwrite the input photo")
    if keep_metadata:
        icc = _source_icc_profile(source_path)
        if icc is not None:
            options["icc_profile"] = icc
    image = Image.fromarray(pixels)  # fresh image: empty .info, nothing inherited
    _write_atomically(path, lambda stream: image.save(stream, format=pil_format, **options), "image")


def as_saved(array: np.ndarray, fmt: str = "png", *, jpeg_quality: int = 95) -> np.ndarray:
    """The ``HxWx3`` uint8 pixels a file written by :func:`save_image` decodes to: ``array`` itself for PNG
    (lossless), the decoded JPEG encoding (same options, same bytes) for JPEG."""
    pil_format, options = _save_options(fmt, jpeg_quality)
    pixels = _check_array(array, Path(f"(the {fmt} encoding)"))
    if pil_format == "PNG":
        return pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=pil_format, **options)
    buffer.seek(0)
    with Image.open(buffer, formats=(pil_format,)) as decoded:
        return np.array(decoded.convert("RGB"), dtype=np.uint8)


def _save_options(fmt: str, jpeg_quality: int) -> tuple[str, dict[str, object]]:
    """Pillow's format name and save options for ``fmt``; a bad format or quality is a ConfigError."""
    pil_format = _PIL_FORMAT.get(fmt.lower()) if isinstance(fmt, str) else None
    if pil_format is None:
        raise ConfigError(f"unknown output format {fmt!r}; use 'png' or 'jpeg'")
    if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality must be an integer from 1 to 100, got {jpeg_quality!r}")
    if pil_format == "JPEG":
        return pil_format, {"quality": jpeg_quality, "subsampling": 0}
    return pil_format, {"compress_level": 6}


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object], what: str) -> None:
    """``write`` into a hidden temp file beside ``path`` (short fixed prefix: any valid name still fits), fsync,
    rename over ``path``; on failure the temp file is removed, ``path`` untouched and an ImageError names it."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"{folder}: cannot create output folder ({exc.strerror or exc})") from exc
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(delete=False, dir=folder, prefix=".gk-", suffix=".tmp") as tmp:
            tmp_name = tmp.name
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile is created 0600; give the output the permissions of a normal file.
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise ImageError(f"{path}: cannot write {what} ({exc.strerror or exc})") from exc
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


def file_digest(path: Path) -> str:
    """SHA-256 of ``path``'s bytes (hex). Raises OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(output: Path) -> Path:
    """Where ``output``'s record lives: a fixed-length name, whatever the output's."""
    return output.parent / RECORDS / f"{hashlib.sha256(output.name.encode()).hexdigest()[:32]}.json"


def record_output(output: Path, source: Path, settings: Mapping[str, Any] | None = None) -> None:
    """Record (atomically) that ``output`` was made from ``source`` under ``settings`` (JSON): the digests of
    both files and the settings, never the source's path (the output folder may be shared)."""
    output = Path(output)
    try:
        record = {"output": output.name, "output_sha256": file_digest(output),
                  "source_sha256": file_digest(Path(source)), "settings": settings}
    except OSError as exc:
        raise ImageError(f"{output}: cannot record its source ({exc.strerror or exc})") from exc
    data = json.dumps(record, sort_keys=True).encode()
    _write_atomically(_record_path(output), lambda stream: stream.write(data), "its record")


def _record(output: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(_record_path(Path(output)).read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("output") == Path(output).name else None


def recorded_source(output: Path, source: Path) -> bool:
    """True when ``output``'s record says it was made from ``source`` (same bytes), whatever the settings and
    whatever became of the output since: the name is ``source``'s to write again."""
    record = _record(output)
    try:
        return record is not None and record.get("source_sha256") == file_digest(Path(source))
    except OSError:
        return False


def made_by(output: Path, source: Path, settings: Mapping[str, Any] | None = None) -> bool:
    """True when ``output`` is, byte for byte, what its record says ``source`` made under ``settings``."""
    record = _record(output)
    if record is None or record.get("settings") != json.loads(json.dumps(settings, sort_keys=True)):
        return False
    try:
        return (record.get("source_sha256") == file_digest(Path(source))
                and record.get("output_sha256") == file_digest(Path(output)))
    except OSError:
        return False
