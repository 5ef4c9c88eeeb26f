"""``guardkit bench protect PHOTO``: how long a protection of your photo takes, and its peak memory, through
the public ``Engine`` API (``guardkit.bench``), as the photo grows. Speed is reported, never asserted; the
research measurements (FaceLock's released loop vs guardkit's) are scripts in the repository's ``benchmarks/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from guardkit.cli._options import FaceModelOpt, JsonOpt, MethodOpt, err_console, one_line_errors, out_console

app = typer.Typer(help="Benchmarks: the time and peak memory of a protection of your photo.", no_args_is_help=True)


def _numbers(text: str, what: str) -> list[float]:
    from guardkit.errors import ConfigError

    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{what}: comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what}: give at least one number")
    return values


def _log(text: str) -> None:
    err_console.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command("protect")
@one_line_errors
def protect_command(
    photo: Annotated[Path, typer.Argument(help="A photo with a face.")],
    method: MethodOpt = None,
    face_model: FaceModelOpt = "",
    strength: Annotated[Optional[str], typer.Option(help="low, mid or high (default: the method's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="PGD steps (default: the strength's).")] = None,
    megapixels: Annotated[str, typer.Option(help="Sizes, comma-separated (0: the photo as it is); cropped or "
                                                 "padded around the face, which keeps its size.")] = "0",
    repeats: Annotated[int, typer.Option(help="Timed runs per size (median reported).")] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or auto.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Time protecting PHOTO as `guardkit run` does (find, protect, save): medians and peak memory.

    One untimed run first; then per size the median seconds per call, the engine's own protect seconds, and
    peak memory (resident set on cpu, allocated on cuda)."""
    from guardkit.bench import bench_table, protect_bench
    from guardkit.engine import DEFAULT_METHOD
    from guardkit.ensemble import parse_models

    method = DEFAULT_METHOD if method is None else method
    rows = protect_bench(photo, method=method, face_model=parse_models(face_model) or None, strength=strength,
                         steps=steps, device=device, threads=threads, megapixels=_numbers(megapixels, "--megapixels"),
                         repeats=repeats, log=_log)
    if as_json:
        out_console.print_json(json.dumps({"benchmark": "protect", "photo": str(photo), "method": method,
                                           "device": device, "rows": [r.as_dict() for r in rows]}))
        return
    out_console.print(bench_table(rows), highlight=False, markup=False)


bench_command = app  # `app.add_typer(bench.app, name="bench")` in guardkit.cli
