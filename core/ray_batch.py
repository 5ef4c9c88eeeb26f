"""Batch protection on Ray: the Engine's protection as Ray Data ``map_batches`` over actors that hold the
loaded models (one per GPU where the cluster has GPUs and the run asks for one, CPU actors otherwise).

```python
import guardkit.ray_batch
result = guardkit.ray_batch.protect(["photos/"], "out/", address="auto", run=RunConfig(seed=0))
```

Inputs and outputs are local paths (on a cluster: a folder every node sees) or fsspec URLs
(``s3://bucket/photos/``, ``gs://...``, ``file:///...``). The output names, the resume (a finished output
is skipped), the per-file failure records and the atomic, metadata-free writes are the Engine's and
``guardkit.imageio``'s: a photo gives the same bytes as ``guardkit run`` for the same seed. Every keyword
this module does not know is handed to ``Engine.protect`` untouched. Needs the ``ray`` extra.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

from guardkit.config import RunConfig
from guardkit.engine import PhotoResult, ProtectResult
from guardkit.errors import ConfigError, GuardkitError, ImageError
from guardkit.imageio import IMAGE_SUFFIXES, collect_inputs, is_done, plan_outputs, save_image, upright_size

ADDRESS_HELP = "auto (a running cluster), local (start one here), HOST:PORT or ray://HOST:PORT"


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def check_address(address: str | None) -> str | None:
    """``None``/``"local"``: a Ray started here (or $RAY_ADDRESS); else a cluster address, checked so that a
    photo folder given where the address goes is a clear error, not a failed connection."""
    if address in (None, "", "local", "default"):
        return None
    if address == "auto" or "://" in address or (":" in address and address.rsplit(":", 1)[1].isdigit()):
        return address
    raise ConfigError(f"--ray takes a cluster address ({ADDRESS_HELP}), got {address!r}; "
                      "put the photos after another option or give the address")


@dataclass(frozen=True)
class Item:
    """One photo to protect: where it is and where its output goes (paths or URLs, as strings)."""

    source: str
    output: str


def plan(inputs: Sequence[str | Path], output_dir: str | Path, fmt: str,
         failures: list[tuple[Path | str, str]] | None = None) -> list[Item]:
    """Every photo and its output, named exactly as ``guardkit run`` names them (``imageio.plan_outputs``);
    an output that would be (point at) one of the inputs is an ImageError, URLs included. With ``failures``, a
    bad path or URL (missing, a broken link, ...) is added to it instead of raising."""
    sources: list[str] = []
    for item in inputs:
        if not is_url(item):
            sources += [str(p) for p in collect_inputs([Path(item)], failures)]
            continue
        try:
            sources += _list_url(str(item))
        except (ImageError, OSError) as exc:
            message = str(exc) if isinstance(exc, ImageError) else f"{item}: cannot read ({exc})"
            if failures is None:
                raise ImageError(message) from None
            failures.append((Url(str(item)), message))
    if not sources and failures:
        return []
    if not sources:
        raise ImageError(f"no photos found in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    if is_url(output_dir):
        names = plan_outputs([Path(_path_of(s)) for s in sources], Path("/nonexistent-guardkit-out"), fmt)
        base = str(output_dir).rstrip("/")
        items = [Item(s, f"{base}/{names[Path(_path_of(s))].name}") for s in sources]
    else:
        local = plan_outputs([Path(s) for s in sources], Path(output_dir), fmt)
        items = [Item(s, str(local[Path(s)])) for s in sources]
    read = {_where(s): s for s in sources}
    for item in items:
        overwritten = read.get(_where(item.output))
        if overwritten is not None:
            raise ImageError(f"{item.source}: output {item.output} would overwrite the input {overwritten}; "
                             "choose a different output folder")
    return items


def _where(location: str) -> tuple[str, str]:
    """Where ``location`` points, however spelt: ``(protocol, path)``; local paths and ``file://`` URLs as
    ``("file", the real path)``."""
    if not is_url(location):
        return "file", os.path.realpath(location)
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return ("file", os.path.realpath(path)) if protocol in ("file", "local") else (protocol, path.rstrip("/"))


def _path_of(location: str) -> str:
    return location.split("://", 1)[1] if is_url(location) else location


def _list_url(url: str) -> list[str]:
    """A file URL as is; a folder URL's image files (not hidden, not earlier outputs), sorted by name."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise ImageError(f"{url}: no such file or folder")
    if not fs.isdir(path):
        return [url]
    protocol = url.split("://", 1)[0]
    names = sorted(PurePosixPath(p).name for p in fs.ls(path, detail=False))
    return [f"{protocol}://{path.rstrip('/')}/{n}" for n in names
            if not n.startswith(".") and PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES
            and not PurePosixPath(n).stem.lower().endswith(".protected")]


def is_finished(item: Item) -> bool:
    """``item``'s output is complete and has the size this run writes (its source's upright size), as the
    shared photo loop's resume decides (``guardkit.photo_loop``): local, the output fully decodes at that size
    (``is_done(size=)``); a URL, written whole (upload, then rename), is there, not empty, and its header gives
    that size. An output of another size (an older run's at another resolution, another photo's under the
    same name) or a source that cannot be read is not finished: the run redoes it, or names the problem."""
    if not is_url(item.output):
        if not Path(item.output).is_file():
            return False
        size = _source_size(item.source)
        return size is not None and is_done(Path(item.output), size=size)
    import fsspec
    from PIL import Image

    fs, path = fsspec.core.url_to_fs(item.output)
    if not (fs.exists(path) and fs.size(path) > 0):
        return False
    size = _source_size(item.source)
    try:
        with fs.open(path, "rb") as stream, Image.open(stream) as img:  # written by save_image: no EXIF turn
            return size is not None and tuple(img.size) == size
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _source_size(source: str) -> tuple[int, int] | None:
    """``(width, height)`` the run writes for ``source`` (its upright size), or None when it cannot be read."""
    try:
        if not is_url(source):
            return upright_size(Path(source))
        with tempfile.TemporaryDirectory(prefix="guardkit-ray-") as scratch:
            return upright_size(_fetch(source, Path(scratch) / "source"))
    except (GuardkitError, OSError):
        return None


class PhotoProtector:
    """A Ray actor's state: one Engine with a ``PartCache`` (models load on the first batch, then stay). Called by Ray
    Data with a batch of ``source``/``output`` rows; returns one record per photo."""

    def __init__(self, protect_kwargs: dict[str, Any], fmt: str) -> None:
        from guardkit.loaded import loaded_engine

        self.engine = loaded_engine()
        self.kwargs = protect_kwargs
        self.fmt = fmt
        self.thresholds: dict[str, float] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        items = [Item(s, o) for s, o in zip(batch["source"], batch["output"])]
        with tempfile.TemporaryDirectory(prefix="guardkit-ray-") as scratch:
            records = self._protect(items, Path(scratch))
        return {key: [r[key] for r in records] for key in _RECORD_KEYS}

    def _protect(self, items: list[Item], scratch: Path) -> list[dict[str, Any]]:
        local: dict[Path, Item] = {}
        records: dict[str, dict[str, Any]] = {}
        for i, item in enumerate(items):
            try:
                local[_fetch(item.source, scratch / str(i))] = item
            except OSError as exc:
                records[item.source] = _record(item, "failed", error=f"{item.source}: cannot read ({exc})")
        if local:
            try:
                result = self.engine.protect(list(local), output_dir=None, resume=False, fmt=self.fmt,  # figures as saved
                                             **self.kwargs)
            except GuardkitError as exc:  # a bad option fails every photo, each with the one line
                for item in local.values():
                    records[item.source] = _record(item, "failed", error=str(exc))
            else:
                self.thresholds = dict(result.thresholds)
                for photo in result.photos:
                    item = local[photo.source]
                    records[item.source] = self._write(item, photo, scratch)
        return [{**records[item.source], "thresholds": json.dumps(self.thresholds)} for item in items]

    def _write(self, item: Item, photo: PhotoResult, scratch: Path) -> dict[str, Any]:
        if photo.status != "protected" or photo.protected is None:
            return _record(item, "failed", error=photo.error.replace(str(photo.source), item.source))
        try:
            if is_url(item.output):
                import fsspec

                written = scratch / f"out-{PurePosixPath(item.output).name}"
                save_image(photo.protected, written, fmt=self.fmt)
                fs, path = fsspec.core.url_to_fs(item.output)
                folder, name = path.rsplit("/", 1)
                fs.makedirs(folder, exist_ok=True)
                partial = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"  # whole or absent: upload, then rename
                fs.put_file(str(written), partial)
                fs.mv(partial, path)
            else:
                save_image(photo.protected, Path(item.output), fmt=self.fmt)  # atomic, metadata stripped
        except (ImageError, OSError) as exc:
            return _record(item, "failed", error=f"{item.output}: cannot write ({exc})")
        return _record(item, "protected", photo=photo)


_RECORD_KEYS = ("source", "output", "status", "error", "faces", "linf", "psnr", "distances", "seconds", "thresholds")


def _record(item: Item, status: str, *, error: str = "", photo: PhotoResult | None = None) -> dict[str, Any]:
    return {"source": item.source, "output": item.output if status == "protected" else "", "status": status,
            "error": error, "faces": photo.faces if photo else 0, "linf": photo.linf if photo else 0.0,
            "psnr": photo.psnr if photo else 0.0, "seconds": photo.seconds if photo else 0.0,
            "distances": json.dumps({k: (v if math.isfinite(v) else None) for k, v in (photo.distances if photo else {}).items()})}


def _fetch(source: str, folder: Path) -> Path:
    """A local path to read ``source`` from: itself, or a copy of the URL's bytes under ``folder``."""
    if not is_url(source):
        return Path(source)
    import fsspec

    folder.mkdir()
    target = folder / (PurePosixPath(_path_of(source)).name or "photo")
    with fsspec.open(source, "rb") as remote:
        target.write_bytes(remote.read())
    return target


def protect(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    address: str | None = None,
    fmt: str = "png",
    resume: bool = True,
    run: RunConfig | None = None,
    cpus_per_actor: int = 2,
    batch_size: int = 4,
    on_start: Callable[[int], None] | None = None,
    on_photo: Callable[[PhotoResult], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,  # steps happen in the actors: not reported
    **protect_kwargs: Any,
) -> ProtectResult:
    """Protect ``inputs`` into ``output_dir`` on Ray (``address``: see :func:`check_address`).

    Photos whose output is finished (whole, at the size this run writes: :func:`is_finished`) are skipped
    (``resume``); a photo that fails is recorded and the others go on. Actors: one per GPU when the cluster
    has GPUs and ``run.device`` is not ``cpu``, else one per ``cpus_per_actor`` CPUs. ``protect_kwargs``
    (method, face models, options, ...) go to ``Engine.protect``."""
    import ray

    run = run or RunConfig()
    bad: list[tuple[Path | str, str]] = []  # issue 12 item 13: a bad path is a failed photo, never a stop
    items = plan(inputs, output_dir, fmt, bad)
    if items and not ray.is_initialized():
        ray.init(address=check_address(address), log_to_driver=False, include_dashboard=False)
    results: dict[str, PhotoResult] = {}
    if on_start:
        on_start(len(items) + len(bad))

    def finish(result: PhotoResult) -> None:
        results[str(result.source)] = result
        if on_photo:
            on_photo(result)

    failed = [PhotoResult(_as_source(str(path)), "failed", error=message) for path, message in bad]
    for photo in failed:
        if on_photo:
            on_photo(photo)

    todo = []
    for item in items:
        if resume and is_finished(item):
            finish(PhotoResult(_as_source(item.source), "skipped", output=_as_source(item.output)))
        else:
            todo.append(item)
    thresholds: dict[str, float] = {}
    for row in _run_actors(ray, todo, {**protect_kwargs, "run": run}, fmt, run, cpus_per_actor, batch_size):
        thresholds = thresholds or json.loads(str(row["thresholds"]))
        finish(_photo_result(row))
    first = next(iter(thresholds), "")
    return ProtectResult(failed + [results[item.source] for item in items], face_model=first,
                         threshold=thresholds.get(first, math.nan), thresholds=thresholds)


def _run_actors(ray, items: list[Item], kwargs: dict[str, Any], fmt: str, run: RunConfig, cpus_per_actor: int,
                batch_size: int) -> Iterable[dict[str, Any]]:
    if not items:
        return
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller shows progress (on_photo)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if run.device != "cpu" else 0
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = gpus or max(1, min(len(items), cpus // max(cpus_per_actor, 1)))
    resources = {"num_gpus": 1} if gpus else {"num_cpus": min(cpus_per_actor, cpus)}
    dataset = ray.data.from_items([{"source": i.source, "output": i.output} for i in items],
                                  override_num_blocks=min(len(items), max(actors * 2, 1)))
    mapped = dataset.map_batches(PhotoProtector, fn_constructor_kwargs={"protect_kwargs": kwargs, "fmt": fmt},
                                 batch_size=batch_size, concurrency=actors, batch_format="numpy", **resources)
    yield from mapped.iter_rows()


class Url(str):
    """A URL where a ``Path`` would be (``.name`` works; ``Path`` would fold its ``//``)."""

    @property
    def name(self) -> str:
        return PurePosixPath(_path_of(self)).name


def _as_source(location: str) -> Path | Url:
    return Url(location) if is_url(location) else Path(location)


def protect_on(address: str | None) -> Callable[..., ProtectResult]:
    """``protect`` bound to one cluster address: a drop-in for ``Engine.protect`` (the CLI's ``--ray``)."""
    return functools.partial(protect, address=address)


def _photo_result(row: dict[str, Any]) -> PhotoResult:
    distances = {k: (math.nan if v is None else float(v)) for k, v in json.loads(str(row["distances"])).items()}
    output = str(row["output"])
    return PhotoResult(_as_source(str(row["source"])), str(row["status"]),
                       output=_as_source(output) if output else None, error=str(row["error"]),
                       faces=int(row["faces"]), linf=float(row["linf"]), psnr=float(row["psnr"]),
                       fr_distance=next(iter(distances.values()), math.nan), distances=distances,
                       seconds=float(row["seconds"]))
