"""The ``.cloak`` file: safetensors (one tensor, ``perturbations``) plus JSON metadata. Never pickle.

Metadata (safetensors' string map): ``format`` = ``guardkit-cloak``, ``version``, and ``cloak``, a JSON object
with the kind, finder, face models, budget, frame, variants and how it was made (strength, steps, the
number of enrolment photos), and a sha256 over the format, the version, the rest of that object (canonical
JSON) and the tensor's bytes, so a truncated or edited file is refused in one line. The checksum catches
damage and naive edits, not a forger (anyone can recompute it), so every value is also checked on load: the
budget within what guardkit makes (eps up to ``MAX_EPS``), the perturbations within it, frame and fill sane.
It holds no photo data, no photo names and no embedding of the person.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from guardkit.cloak import Cloak
from guardkit.errors import GuardkitError

FORMAT = "guardkit-cloak"
VERSION = 2  # 2: the checksum covers the metadata and the tensor; 1 (older guardkit): the tensor alone
MAX_FRAME = 512
MAX_VARIANTS = 32
MAX_EPS = 32 / 255  # twice the largest budget guardkit enrols or protects at (strength high, 16/255)
MAX_METADATA = 1 << 14  # characters of the ``cloak`` JSON; a real one is a few hundred
MAX_BYTES = MAX_VARIANTS * 3 * MAX_FRAME * MAX_FRAME * 4 + (1 << 16)
INFO_KEYS = frozenset({"strength", "steps", "photos", "seconds", "seed", "guardkit"})  # nothing about the person


class CloakFileError(GuardkitError):
    """A cloak file that cannot be used: not a cloak, an unknown version, truncated or edited."""


def _digest(meta: dict[str, Any], perturbations: torch.Tensor) -> str:
    """sha256 of the format, the version, ``meta`` without its ``sha256`` (canonical JSON) and the tensor's bytes."""
    canonical = json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{FORMAT}\n{VERSION}\n{canonical}\n".encode())
    digest.update(perturbations.contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_cloak(cloak: Cloak, path: str | Path) -> Path:
    """Write ``cloak`` to ``path`` atomically (a temporary file in the same folder, then renamed)."""
    from safetensors.torch import save

    path = Path(path)
    tensor = cloak.perturbations.detach().to("cpu", torch.float32).contiguous()
    info = {k: v for k, v in cloak.info.items() if k in INFO_KEYS}
    meta: dict[str, Any] = {"kind": cloak.kind, "finder": cloak.finder, "face_models": list(cloak.face_models),
                            "eps": float(cloak.eps), "psnr_floor": float(cloak.psnr_floor), "fill": float(cloak.fill),
                            "frame": cloak.frame, "variants": cloak.variants, "info": info}
    meta["sha256"] = _digest(meta, tensor)
    data = save({"perturbations": tensor}, metadata={"format": FORMAT, "version": str(VERSION),
                                                     "cloak": json.dumps(meta, sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file in the same folder, then renamed: a reader sees the old
    file or the whole new one, never a part (cloak files and enrolment checkpoints)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cloak(path: str | Path) -> Cloak:
    """Read and check a cloak file; any problem is a one-line ``CloakFileError`` naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CloakFileError(f"{path}: too large for a cloak file ({path.stat().st_size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise CloakFileError(f"{path}: cannot read the cloak file ({exc.strerror or exc})") from None
    return cloak_from_bytes(data, str(path))


def cloak_from_bytes(data: bytes, name: str) -> Cloak:
    """Check and read a cloak file's bytes (an upload); ``name`` only labels the one-line ``CloakFileError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = name
    if len(data) > MAX_BYTES:
        raise CloakFileError(f"{name}: too large for a cloak file ({len(data)} bytes)")
    try:
        tensors = load(data)
        header = _metadata(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CloakFileError(f"{path}: not a cloak file, or truncated ({str(exc).splitlines()[0][:120]})") from None
    if header.get("format") != FORMAT:
        raise CloakFileError(f"{path}: not a guardkit cloak file (format {header.get('format')!r})")
    version = header.get("version")
    if version in {str(v) for v in range(1, VERSION)}:
        raise CloakFileError(f"{path}: cloak format version {version} is from an older guardkit and cannot be "
                             f"checked by this one; enrol again (guardkit enroll) to write a version {VERSION} file")
    if version != str(VERSION):
        raise CloakFileError(f"{path}: cloak format version {version!r} is not supported by this "
                             f"guardkit (it reads version {VERSION}); re-enrol or upgrade guardkit")
    text = header.get("cloak")
    if not isinstance(text, str) or len(text) > MAX_METADATA:
        raise CloakFileError(f"{path}: damaged cloak metadata (missing, or longer than {MAX_METADATA} characters)")
    try:
        return _checked(path, tensors, json.loads(text))
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:120]
        raise CloakFileError(f"{path}: damaged cloak metadata ({type(exc).__name__}: {reason})") from None


def _metadata(data: bytes) -> dict[str, str]:
    """safetensors' ``__metadata__`` map, read from the header the library just validated."""
    size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8:8 + size].decode("utf-8")).get("__metadata__") or {})


def _whole(path: str, meta: dict[str, Any], key: str, low: int, high: int) -> int:
    """``meta[key]``: a whole number from ``low`` to ``high``; otherwise a one-line error naming the file."""
    value = meta[key]
    if type(value) is not int or not low <= value <= high:
        raise CloakFileError(f"{path}: bad {key} {repr(value)[:40]} (a whole number, {low}-{high})")
    return value


def _real(path: str, meta: dict[str, Any], key: str, low: float, high: float = math.inf, *,
          above_low: bool = False) -> float:
    """``meta[key]``: a finite number from ``low`` (or above it) to ``high``; otherwise a one-line error."""
    value = meta[key]
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and (low < number if above_low else low <= number) and number <= high):
        span = f"{'(' if above_low else '['}{low:g}, {high:.4g}{']' if math.isfinite(high) else ')'}"
        raise CloakFileError(f"{path}: bad {key} {repr(value)[:40]} (a finite number in {span})")
    return number


def _names(path: str, value: Any, key: str) -> tuple[str, ...]:
    """``value``: a non-empty list of non-empty names; otherwise a one-line error naming the file."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise CloakFileError(f"{path}: {key} must be a non-empty list of names")
    return tuple(value)


def _checked(path: str, tensors: dict[str, torch.Tensor], meta: Any) -> Cloak:
    if not isinstance(meta, dict):
        raise CloakFileError(f"{path}: damaged cloak metadata (not a JSON object)")
    if set(tensors) != {"perturbations"}:
        raise CloakFileError(f"{path}: a cloak file holds one tensor, 'perturbations'; found {sorted(tensors)}")
    tensor = tensors["perturbations"]
    if tensor.dtype != torch.float32 or _digest(meta, tensor) != meta.get("sha256"):
        raise CloakFileError(f"{path}: the cloak does not match its checksum: the file was edited or damaged")
    frame = _whole(path, meta, "frame", 8, MAX_FRAME)
    variants = _whole(path, meta, "variants", 1, MAX_VARIANTS)
    if tuple(tensor.shape) != (variants, 3, frame, frame):
        raise CloakFileError(f"{path}: perturbations {tuple(tensor.shape)} do not match the metadata "
                             f"({variants} variants of a {frame}-px frame)")
    eps = _real(path, meta, "eps", 0.0, MAX_EPS, above_low=True)
    if not torch.isfinite(tensor).all() or float(tensor.abs().max()) > eps + 1e-6:
        raise CloakFileError(f"{path}: perturbations exceed the cloak's own budget (eps {eps * 255:.3g}/255)")
    psnr_floor = _real(path, meta, "psnr_floor", 0.0)
    fill = _real(path, meta, "fill", 0.1, 1.0)
    kind, finder, info = meta["kind"], meta["finder"], meta["info"]
    if not isinstance(kind, str) or not isinstance(finder, str) or not finder or not isinstance(info, dict):
        raise CloakFileError(f"{path}: damaged cloak metadata (kind and finder must be names, info an object)")
    return Cloak(tensor, eps=eps, finder=finder, face_models=_names(path, meta["face_models"], "face_models"),
                 psnr_floor=psnr_floor, fill=fill, kind=kind, info={k: v for k, v in info.items() if k in INFO_KEYS})
