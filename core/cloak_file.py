"""The ``.cloak`` file: safetensors (one tensor, ``perturbations``) plus JSON metadata. Never pickle.

Metadata (safetensors' string map): ``format`` = ``guardkit-cloak``, ``version``, and ``cloak``, a JSON object
with the kind, finder, face models, budget, frame, variants and how it was made (strength, steps, the
number of enrolment photos), and the sha256 of the tensor's bytes, so a truncated or edited file is refused
in one line. It holds no photo data, no photo names and no embedding of the person.
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
VERSION = 1
MAX_FRAME = 512
MAX_VARIANTS = 32
MAX_BYTES = MAX_VARIANTS * 3 * MAX_FRAME * MAX_FRAME * 4 + (1 << 16)
INFO_KEYS = frozenset({"strength", "steps", "photos", "seconds", "seed", "guardkit"})  # nothing about the person


class CloakFileError(GuardkitError):
    """A cloak file that cannot be used: not a cloak, an unknown version, truncated or edited."""


def _digest(perturbations: torch.Tensor) -> str:
    return hashlib.sha256(perturbations.contiguous().numpy().tobytes()).hexdigest()


def save_cloak(cloak: Cloak, path: str | Path) -> Path:
    """Write ``cloak`` to ``path`` atomically (a temporary file in the same folder, then renamed)."""
    from safetensors.torch import save

    path = Path(path)
    tensor = cloak.perturbations.detach().to("cpu", torch.float32).contiguous()
    info = {k: v for k, v in cloak.info.items() if k in INFO_KEYS}
    meta = {"kind": cloak.kind, "finder": cloak.finder, "face_models": list(cloak.face_models), "eps": cloak.eps,
            "psnr_floor": cloak.psnr_floor, "fill": cloak.fill, "frame": cloak.frame, "variants": cloak.variants, "info": info,
            "sha256": _digest(tensor)}
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
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CloakFileError(f"{path}: not a cloak file, or truncated ({str(exc).splitlines()[0][:120]})") from None
    if header.get("format") != FORMAT:
        raise CloakFileError(f"{path}: not a guardkit cloak file (format {header.get('format')!r})")
    if header.get("version") != str(VERSION):
        raise CloakFileError(f"{path}: cloak format version {header.get('version')!r} is not supported by this "
                             f"guardkit (it reads version {VERSION}); re-enrol or upgrade guardkit")
    try:
        meta = json.loads(header["cloak"])
        return _checked(path, tensors, meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise CloakFileError(f"{path}: damaged cloak metadata ({exc})") from None


def _metadata(data: bytes) -> dict[str, str]:
    """safetensors' ``__metadata__`` map, read from the header the library just validated."""
    size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8:8 + size].decode("utf-8")).get("__metadata__") or {})


def _checked(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Cloak:
    if set(tensors) != {"perturbations"}:
        raise CloakFileError(f"{path}: a cloak file holds one tensor, 'perturbations'; found {sorted(tensors)}")
    tensor = tensors["perturbations"]
    frame, variants, eps = int(meta["frame"]), int(meta["variants"]), float(meta["eps"])
    if tensor.dtype != torch.float32 or tuple(tensor.shape) != (variants, 3, frame, frame) \
            or not (8 <= frame <= MAX_FRAME and 1 <= variants <= MAX_VARIANTS):
        raise CloakFileError(f"{path}: perturbations {tuple(tensor.shape)} {tensor.dtype} do not match the metadata "
                             f"({variants} variants of a {frame}-px frame, float32)")
    if _digest(tensor) != meta["sha256"]:
        raise CloakFileError(f"{path}: the perturbations do not match their checksum: the file was edited or damaged")
    if not (0 < eps <= 1) or not torch.isfinite(tensor).all() or float(tensor.abs().max()) > eps + 1e-6:
        raise CloakFileError(f"{path}: perturbations exceed the cloak's own budget (eps {eps})")
    psnr_floor = float(meta.get("psnr_floor", 0.0))
    if not math.isfinite(psnr_floor) or psnr_floor < 0:
        raise CloakFileError(f"{path}: bad psnr_floor {psnr_floor!r}")
    fill = float(meta.get("fill", 0.5))
    if not 0.1 <= fill <= 1.0:
        raise CloakFileError(f"{path}: bad fill {fill!r} (the chip's share of the frame, 0.1-1)")
    models = meta["face_models"]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise CloakFileError(f"{path}: face_models must be a list of names")
    return Cloak(tensor, eps=eps, finder=str(meta["finder"]), face_models=tuple(models), psnr_floor=psnr_floor, fill=fill,
                 kind=str(meta["kind"]), info={k: v for k, v in dict(meta.get("info") or {}).items() if k in INFO_KEYS})
