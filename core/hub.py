"""Offline loading of Hugging Face-format models (diffusers pipelines and models), shared by parts.

A part names its ``HubSource``; ``load_offline`` tries, in order, the part's ``path`` option (only
there, when given), ``weights_dir/<hub id>`` (the folder itself or its ``subfolder``), and the Hugging
Face cache with ``local_files_only=True``. Nothing is ever downloaded. Every failure is one
``WeightsError`` line that names where it looked and how to fetch the weights.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from guardkit.errors import WeightsError, first_line
from guardkit.weights import hf_cache_dir

#: ``load(where, **hub_kwargs)``: ``where`` is a local folder or the hub id (then with subfolder,
#: revision and cache_dir); the part adds its own keyword arguments (dtype, local_files_only, ...).
Loader = Callable[..., Any]


@dataclass(frozen=True)
class HubSource:
    """Where a part's weights come from. ``marker``: the file that makes a folder loadable
    (``config.json`` for a model, ``model_index.json`` for a pipeline); ``fetch_filter``: extra
    ``hf download`` arguments; ``path_option``: how a user passes a folder on the CLI; ``note``: e.g.
    a gated licence."""

    part: str
    hub_id: str
    revision: str = "main"
    subfolder: str | None = None
    marker: str = "config.json"
    fetch_filter: str = ""
    path_option: str = "--weights-dir"
    note: str = ""

    def how_to_fetch(self) -> str:
        rev = f" --revision {self.revision}" if self.revision != "main" else ""
        extra = f" {self.fetch_filter}" if self.fetch_filter else ""
        note = f"{self.note}; " if self.note else ""
        return (f"{note}fetch them with `hf download {self.hub_id}{rev}{extra} --local-dir DIR/{self.hub_id}` on a "
                f"machine with network, then pass --weights-dir DIR (or {self.path_option} DIR/{self.hub_id})")


def local_candidates(source: HubSource, path: str | Path | None, weights_dir: str | Path | None) -> list[Path]:
    if path is not None:
        return [Path(path).expanduser()]
    if weights_dir is not None:
        return [Path(weights_dir).expanduser() / source.hub_id]
    return []


def load_offline(source: HubSource, load: Loader, *, path: str | Path | None = None,
                 weights_dir: str | Path | None = None) -> Any:
    """The loaded model or pipeline, from a local folder or the HF cache; never from the network."""
    from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled

    candidates = local_candidates(source, path, weights_dir)
    for folder in candidates:
        for where in ([folder, folder / source.subfolder] if source.subfolder else [folder]):
            if (where / source.marker).is_file():
                try:
                    return load(str(where))
                except (OSError, ValueError) as exc:
                    raise WeightsError(f"{source.part} weights in {where} are incomplete or unreadable "
                                       f"({first_line(exc)}): {source.how_to_fetch()}") from exc
    if path is not None:
        inside = f" or in its {source.subfolder}/ folder" if source.subfolder else ""
        raise WeightsError(f"{source.part} weights not found in {path} (no {source.marker} there{inside}): "
                           f"{source.how_to_fetch()}")
    cache = hf_cache_dir()
    hub_kwargs: dict[str, Any] = {"revision": source.revision, "cache_dir": str(cache)}
    if source.subfolder:
        hub_kwargs["subfolder"] = source.subfolder
    try:
        with warnings.catch_warnings():  # diffusers passes hub arguments that huggingface_hub deprecates
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return load(source.hub_id, **hub_kwargs)
    except (OSError, ValueError, EntryNotFoundError, OfflineModeIsEnabled) as exc:
        looked = [str(p) for p in candidates] + [f"the Hugging Face cache {cache}"]
        sub = f" subfolder {source.subfolder}" if source.subfolder else ""
        raise WeightsError(f"{source.part} weights not found (looked in {' and '.join(looked)} for "
                           f"{source.hub_id}@{source.revision}{sub}): {source.how_to_fetch()}") from exc


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """transformers' and diffusers' warnings off while a part imports and loads them (e.g. "requires
    torchvision ... falling back"), so the user sees guardkit's one line; restored afterwards."""
    restore = []
    for name in ("transformers", "diffusers"):
        if importlib.util.find_spec(name) is None:
            continue
        logging_module = importlib.import_module(f"{name}.utils.logging")
        restore.append((logging_module, logging_module.get_verbosity()))
        logging_module.set_verbosity_error()
    try:
        yield
    finally:
        for logging_module, level in restore:
            logging_module.set_verbosity(level)
