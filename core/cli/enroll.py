"""``guardkit enroll``: learn one person's cloak from a few photos of them, for ``guardkit run --cloak``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from guardkit.cli._options import (
    EXIT_FAILED_PHOTOS, DisableOpt, JsonOpt, WeightsDirOpt, err_console, one_line_errors, out_console, progress, warn,
)
from guardkit.config import RunConfig
from guardkit.ensemble import parse_models


@one_line_errors
def enroll_command(
    photos: Annotated[list[Path], typer.Argument(help="3-10 photos (or folders) of one person.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The cloak file to write (e.g. me.cloak).")],
    face_model: Annotated[Optional[str], typer.Option(
        "--fr", help="Face recognition models to enrol against, comma-separated (default: dlib,facenet).")] = None,
    strength: Annotated[Optional[str], typer.Option(
        help="low (4/255, PSNR >= 42 dB), mid (8/255, PSNR >= 38 dB, default) or high (16/255, 33 dB).")] = None,
    finder: Annotated[Optional[str], typer.Option(
        "--finder", help="The face finder that places the cloak, now and on every later photo (default: mtcnn).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimisation steps (default 200).")] = None,
    variants: Annotated[Optional[int], typer.Option(
        help="Cloak variants (default 2): photos carrying different ones are pushed apart.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same photos and seed, same cloak.")] = 0,
    resume: Annotated[bool, typer.Option(help="Go on from the checkpoint an interrupted enrolment left.")] = True,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's).")] = None,
    weights_dir: WeightsDirOpt = None,
    disable_plugin: DisableOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Learn a cloak for the person in PHOTOS, then protect any new photo of them in well under a second with
    `guardkit run --cloak OUTPUT`. The cloak file holds no photo and no face template of the person."""
    from guardkit.engine import Engine

    if output.exists() and output.is_dir():
        raise typer.BadParameter(f"{output} is a folder: give the cloak file's name (e.g. {output}/me.cloak)")
    engine = Engine(disabled=disable_plugin or ())
    for error in engine.errors:
        warn(str(error))
    run = RunConfig(seed=seed, weights_dir=weights_dir, threads=threads)
    with progress() as bar:
        task = bar.add_task("enrol", total=None)
        result = engine.enroll(photos, output=output, face_model=parse_models(face_model) or None, strength=strength,
                               finder=finder, steps=steps, variants=variants, run=run, resume=resume,
                               on_step=lambda step, total: bar.update(task, completed=step, total=total))
    for path, message in result.failed:
        err_console.print(f"[red]not enrolled:[/] {escape(message)}", highlight=False, soft_wrap=True)
    cloak = result.cloak
    if as_json:
        out_console.print_json(json.dumps({
            "output": str(result.output), "used": [str(p) for p in result.used],
            "failed": [{"photo": str(p), "error": m} for p, m in result.failed], "seconds": round(result.seconds, 1),
            "eps": cloak.eps, "psnr_floor": cloak.psnr_floor, "face_models": list(cloak.face_models),
            "finder": cloak.finder, "variants": cloak.variants}))
    else:
        out_console.print(f"wrote {escape(str(result.output))}: {len(result.used)} photos, {cloak.variants} variants, "
                          f"against {' + '.join(cloak.face_models)}, eps {cloak.eps * 255:.3g}/255, PSNR >= "
                          f"{cloak.psnr_floor:g} dB, {result.seconds:.0f} s", highlight=False)
    if result.failed:
        raise typer.Exit(EXIT_FAILED_PHOTOS)
