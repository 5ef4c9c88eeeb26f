"""``guardkit edit``: edit photos with a text prompt; with ``--protect``, so that face recognition does not
link the result to the person (``flux-guard``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from guardkit.cli._options import (
    EXIT_FAILED_PHOTOS,
    DisableOpt,
    FaceFinderOpt,
    JsonOpt,
    WeightsDirOpt,
    err_console,
    one_line_errors,
    out_console,
    progress,
    warn,
)
from guardkit.config import RunConfig
from guardkit.errors import ConfigError
from guardkit.specs import number
from rich.markup import escape
from rich.table import Table


def _pairs(pairs: list[str] | None, what: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} must look like NAME=VALUE, got {pair!r}")
        out[key.strip()] = number(value.strip())
    return out


@one_line_errors
def edit_command(
    inputs: Annotated[list[Path], typer.Argument(help="Photos or folders of photos.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the edited photos.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The edit: what the photo should show.")],
    source_prompt: Annotated[str, typer.Option(help="What the photo shows now (for the inversion).")] = "",
    editor: Annotated[str | None, typer.Option(
        "--editor", help="Editor (see `guardkit plugins`; default: flux-edit).", show_default=False)] = None,
    editor_path: Annotated[Path | None, typer.Option(help="Local diffusers folder of the editor's weights.")] = None,
    protect: Annotated[str | None, typer.Option(
        "--protect", help="Edit method that protects the faces (flux-guard); without it, a plain edit.")] = None,
    fr: Annotated[str | None, typer.Option("--fr", help="Face models, comma-separated: the ensemble to protect against "
                                                        "and the distances reported (default: dlib).")] = None,
    face_finder: FaceFinderOpt = None,
    parser: Annotated[str | None, typer.Option(
        "--parser", help="Face parser that finds the edit region (default: landmarks).")] = None,
    target_identity: Annotated[Path | None, typer.Option(
        help="A photo of someone else: impersonate them (default: dodging).")] = None,
    mask: Annotated[Path | None, typer.Option(help="Edit-region mask image (white = edit); overrides the "
                                                      "prompt's regions.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default: the method's, or the editor's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same output.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or auto.")] = "cpu",
    resolution: Annotated[int, typer.Option(help="Longer side of the edited photo, a multiple of 16.")] = 512,
    fmt: Annotated[str, typer.Option("--format", help="png (lossless, default) or jpeg.")] = "png",
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="Protection option KEY=VALUE "
                                                        "(see `guardkit methods show flux-guard`).")] = None,
    editor_option: Annotated[list[str] | None, typer.Option("--editor-option", "-E",
                                                               help="Editor option KEY=VALUE.")] = None,
    resume: Annotated[bool, typer.Option(help="Skip photos already edited in the output folder.")] = True,
    weights_dir: WeightsDirOpt = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
    disable_plugin: DisableOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit every photo in INPUTS under --prompt and write the results to OUTPUT (PNG, metadata stripped)."""
    from guardkit.engine import DEFAULT_EDITOR, DEFAULT_FACE_MODEL, Engine

    if fmt not in ("png", "jpeg"):
        raise ConfigError(f"--format must be png or jpeg, got {fmt!r}")
    if not prompt.strip():
        raise ConfigError("--prompt is empty: say what to change, e.g. --prompt \"a photo of a man with blond hair\"")
    face_models = None if fr is None else [n.strip() for n in fr.split(",") if n.strip()]
    if face_models is not None and not face_models:
        raise ConfigError("--fr names no face model")
    chosen = {k: v for k, v in (("editor", editor), ("face_models", face_models), ("face_finder", face_finder),
                                ("face_parser", parser)) if v is not None}  # the rest: Engine.edit's defaults
    engine = Engine(disabled=disable_plugin or ())
    for error in engine.errors:
        warn(str(error))
    run = RunConfig(device=device, seed=seed, weights_dir=weights_dir, threads=threads)
    editor_options = _pairs(editor_option, "--editor-option")
    if editor_path is not None:
        editor_options["path"] = str(editor_path)
    protect_options = _pairs(option, "--option")
    if steps is not None:
        (protect_options if protect else editor_options)["steps"] = steps
    with progress() as bar:
        task = bar.add_task("protecting" if protect else "editing", total=None)
        results = engine.edit(
            inputs, prompt=prompt, source_prompt=source_prompt, protect=protect, **chosen, target_identity=target_identity,
            mask=mask, resolution=resolution, run=run, output_dir=output, fmt=fmt, resume=resume,
            editor_options=editor_options, protect_options=protect_options or None,
            on_start=lambda n: bar.update(task, total=n), on_photo=lambda r: bar.advance(task),
        )
    editor, face_models = editor or DEFAULT_EDITOR, face_models or [DEFAULT_FACE_MODEL]  # as reported
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        err_console.print(f"[red]failed:[/] {escape(r.error)}", highlight=False, soft_wrap=True)
    if as_json:
        out_console.print_json(json.dumps({
            "prompt": prompt, "editor": editor, "protect": protect, "face_models": face_models,
            "photos": [{"source": str(r.source), "status": r.status, "output": str(r.output) if r.output else None,
                        "error": r.error, "faces": r.faces, "distances": _finite(r.distances),
                        "matches": r.matches, "target_distances": _finite(r.target_distances),
                        "seconds": r.seconds} for r in results],
        }))
    else:
        out_console.print(summary_table(results, face_models, protect, target_identity is not None))
    if failed:
        raise typer.Exit(EXIT_FAILED_PHOTOS)


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in values.items()}


def summary_table(results, face_models: list[str], protect: str | None, impersonating: bool) -> Table:
    table = Table(title=f"edit{' + ' + protect if protect else ''}: distance to the source per face model")
    for column in ("photo", "status", "faces", *[f"{m} distance" for m in face_models],
                   *([f"{m} to target" for m in face_models] if impersonating else []), "s"):
        table.add_column(column)
    for r in results:
        done = r.status in ("edited", "protected")
        cells = []
        for m in face_models:
            d = r.distances.get(m, math.nan)
            cells.append("" if not done or math.isnan(d) else
                         f"{d:.3f} ({'MATCH' if r.matches.get(m) else 'no match'})")
        if impersonating:
            cells += ["" if not done else f"{r.target_distances.get(m, math.nan):.3f}" for m in face_models]
        table.add_row(r.source.name, r.status, str(r.faces) if done else "", *cells,
                      f"{r.seconds:.1f}" if done else "")
    return table
