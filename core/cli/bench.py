"""``guardkit bench``: time FaceLock's released loop against guardkit's ``facelock``, or the default
``fr-cloak`` as the photo grows. The measurements live in ``guardkit.speed``; ``benchmarks/`` has the
same as scripts. Speed is reported, never asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from guardkit.cli._options import JsonOpt, err_console, one_line_errors, out_console

app = typer.Typer(help="Benchmarks: FaceLock's released loop vs guardkit's facelock; fr-cloak vs photo size.",
                  no_args_is_help=True)


def _numbers(text: str, kind: type, what: str) -> list:
    from guardkit.errors import ConfigError

    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{what}: comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what}: give at least one number")
    return values


def _log(text: str) -> None:
    err_console.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command("facelock")
@one_line_errors
def facelock_command(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    resolution: Annotated[int, typer.Option(help="Image side (the encoder's input), multiple of 8.")] = 512,
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 100,
    batch: Annotated[str, typer.Option(help="Batch sizes of guardkit's fast path, comma-separated.")] = "1,4,8",
    face_model: Annotated[str, typer.Option("--face-model", help="arcface (random IResNet-50) or tiny.")] = "arcface",
    autocast: Annotated[str | None, typer.Option(help="Fast path autocast: none, bf16, fp16, or several "
                                                         "('none,bf16'); default bf16 on cuda, none on cpu.")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last",
                                                help="Fast path in channels-last.")] = True,
    compile: Annotated[bool, typer.Option("--compile", help="Fast path with torch.compile.")] = False,
    checkpointing: Annotated[bool, typer.Option("--checkpointing", help="VAE gradient checkpointing.")] = False,
    repeats: Annotated[int, typer.Option(help="Timed runs per configuration (median reported).")] = 1,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """(a) FaceLock's released loop (fp16 on cuda, batch 1) vs (b) guardkit's facelock (fp32 batch 1, and
    the fast path per batch size), random-weight SD 1.5 VAE + LPIPS-alex + face model, in this process."""
    import torch
    from guardkit import speed
    if threads:
        torch.set_num_threads(threads)
    rows = speed.facelock_bench(device=device, resolution=resolution, steps=steps,
                                batches=_numbers(batch, int, "--batch"), face_model=face_model, repeats=repeats,
                                autocast_mode=autocast, channels_last=channels_last, compile=compile,
                                gradient_checkpointing=checkpointing, log=_log)
    if as_json:
        out_console.print_json(json.dumps({"benchmark": "facelock", "device": device, "resolution": resolution,
                                           "steps": steps, "threads": torch.get_num_threads(),
                                           "rows": [r.as_dict() for r in rows]}))
        return
    out_console.print(speed.table(rows, f"facelock, {resolution}x{resolution}, {steps} steps, {device}"
                                        f" ({torch.get_num_threads()} threads)"), highlight=False, markup=False)


@app.command("fr-cloak")
@one_line_errors
def fr_cloak_command(
    photo: Annotated[Path | None, typer.Option(help="Portrait (default: the shared obama.jpg).")] = None,
    megapixels: Annotated[str, typer.Option(help="Sizes, comma-separated (0: the photo as it is); "
                                                 "padded/cropped around the face.")] = "0.25,1,4,12",
    steps: Annotated[int | None, typer.Option(help="PGD steps (default: the method's).")] = None,
    repeats: Annotated[int, typer.Option(help="Runs per size (median reported).")] = 1,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """The default `guardkit run` (fr-cloak, dlib) on CPU as the photo grows: seconds and peak RSS."""
    from guardkit import speed

    rows = speed.fr_cloak_bench(photo=photo, megapixels=_numbers(megapixels, float, "--megapixels"), steps=steps,
                                repeats=repeats, threads=threads, log=_log)
    if as_json:
        out_console.print_json(json.dumps({"benchmark": "fr-cloak", "rows": rows}))
        return
    out_console.print(speed.fr_cloak_table(rows), highlight=False, markup=False)


bench_command = app  # `app.add_typer(bench.app, name="bench")` in guardkit.cli
