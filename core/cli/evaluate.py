"""``guardkit eval`` and ``guardkit verify``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from guardkit.cli._options import DisableOpt, JsonOpt, WeightsDirOpt, one_line_errors, out_console, progress, warn


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@one_line_errors
def eval_command(
    inputs: Annotated[list[Path], typer.Argument(help="Photos or folders of photos.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for images, samples.csv, summary.json, "
                                                                "report.html (re-running resumes; under other "
                                                                "settings it is refused).")] = Path("eval"),
    restart: Annotated[bool, typer.Option(
        "--restart", help="Start the output folder over: remove what an earlier eval wrote there first (its "
                          "images, samples.csv, summary.json, report.html, settings.json).")] = False,
    methods: Annotated[Optional[str], typer.Option(
        help="Comma-separated methods; 'none' is the unprotected baseline (default: none,fr-cloak).",
        show_default=False)] = None,
    editor: Annotated[str, typer.Option(help="Editor (ip2p, flux-edit) or none (score the protected photo).")]
    = "none",
    prompts: Annotated[str, typer.Option(help="Prompt set (paper, paper-facial, ...; paper-code: the released "
                                                 "code's spelling, 'tatto', 'mustach'), a .txt file, or 'a|b'.")]
    = "paper",
    purify: Annotated[str, typer.Option(help="Comma-separated purifications: none,jpeg75,blur,rotate10,...")]
    = "none",
    fr: Annotated[Optional[str], typer.Option(
        "--fr", help="Comma-separated face models to score with (default: dlib).", show_default=False)] = None,
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated metrics (default: all that load).")]
    = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds of the editor.")] = "0",
    size: Annotated[int, typer.Option(help="Side of the face-centred square every photo is cut to.")] = 512,
    encoder: Annotated[Optional[str], typer.Option(help="Encoder of encoder methods.")] = None,
    method_fr: Annotated[Optional[str], typer.Option(
        help="Comma-separated face models the methods attack (the ensemble; default: dlib); --fr models outside "
             "it are reported as held out.", show_default=False)] = None,
    parser: Annotated[Optional[str], typer.Option(
        "--parser", help="Face parser of edit methods (flux-guard's edit region; default: landmarks).",
        show_default=False)] = None,
    finder: Annotated[Optional[str], typer.Option(
        "--finder", help="Face finder of the source photos (default: the first --method-fr model's own).",
        show_default=False)] = None,
    fr_redetect: Annotated[bool, typer.Option(
        help="FR metrics find the face again on the edit, as FaceLock's evaluation (--no-fr-redetect: align the "
             "edit at the source's landmarks). The report says which was used.")] = True,
    far: Annotated[str, typer.Option(
        help="Comma-separated false-accept rates at which asr is also scored (the protocol's cosine thresholds, "
             "where the face model has published ones; 'none' for none).")] = "0.1,0.01,0.001",
    target_identity: Annotated[Optional[Path], typer.Option(
        help="A photo of another person: impersonation ASR (the edit matches this identity; Flux-Guard's "
             "protocol), and the target of edit methods (flux-guard).")] = None,
    editor_path: Annotated[Optional[Path], typer.Option(help="Local folder of the editor's weights.")] = None,
    encoder_path: Annotated[Optional[Path], typer.Option(help="Local folder of the encoder's weights.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-O", help="Method option KEY=VALUE.")] = None,
    editor_option: Annotated[Optional[list[str]], typer.Option("--editor-option", help="Editor option KEY=VALUE.")]
    = None,
    strength: Annotated[Optional[str], typer.Option(
        help="low, mid or high: each method's preset, as `guardkit run --strength` (default: the method's low "
             "preset, or its own step count).")] = None,
    eps: Annotated[Optional[str], typer.Option(
        help="L-inf budget (pixel units; 4/255 works; default: as `guardkit run`).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Protection steps (default: as `guardkit run`).")] = None,
    seed: Annotated[int, typer.Option(help="Protection and purification seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    weights_dir: WeightsDirOpt = None,
    disable_plugin: DisableOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Protect, purify, edit and score: the FaceLock paper's metrics over photos x methods x prompts."""
    from guardkit.config import RunConfig, parse_fraction
    from guardkit.engine import DEFAULT_METHOD, Engine
    from guardkit.eval_report import stat_text
    from guardkit.evaluate import EvalConfig
    from guardkit.cli.run import parse_pairs
    from guardkit.prompts import resolve_prompts
    from guardkit.specs import number

    engine = Engine(disabled=disable_plugin or ())
    for error in engine.errors:
        warn(str(error))
    run = RunConfig(device=device, seed=seed, weights_dir=weights_dir)  # the budget: as `guardkit run` resolves it
    chosen = {k: v for k, v in (("face_models", _names(fr) if fr else None),
                                ("ensemble", _names(method_fr) if method_fr else None), ("face_parser", parser),
                                ("face_finder", finder)) if v is not None}  # the rest: EvalConfig's defaults
    config = EvalConfig(
        methods=["none", DEFAULT_METHOD] if methods is None else _names(methods), editor=editor,
        prompts=resolve_prompts(prompts) if editor != "none" else [""],
        purify=_names(purify), metrics=_names(metrics) if metrics else None,
        seeds=[int(s) for s in _names(seeds)], size=size, encoder=encoder, **chosen,
        fr_redetect=fr_redetect, target_identity=target_identity,
        strength=strength, eps=parse_fraction(eps) if eps else None, steps=steps,
        fars=[] if far.strip().lower() == "none" else [parse_fraction(f) for f in _names(far)],
        method_options={k: number(v) for k, v in parse_pairs(option, "--option").items()},
        editor_options={**({"path": str(editor_path)} if editor_path else {}),
                        **{k: number(v) for k, v in parse_pairs(editor_option, "--editor-option").items()}},
        part_options={"encoder": {"path": str(encoder_path)}} if encoder_path else {},
    )
    with progress() as bar:
        task = bar.add_task("evaluating", total=None)
        result = engine.evaluate(inputs, config, output, run=run, restart=restart, on_warning=warn,
                                 on_sample=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        out_console.print_json(json.dumps({"summary": result.summary, "unavailable": result.unavailable,
                                           "failed": result.failed}, default=lambda v: None))
        if result.failed:  # a bad input was named (warning) and the others evaluated: exit 1, like `run`
            raise typer.Exit(1)
        return
    metric_names = [k for k in (result.summary[0] if result.summary else {}) if k not in ("method", "purify", "n")]
    table = Table(title=f"guardkit eval ({len(result.rows)} samples) -> {result.out_dir}")
    for column in ("method", "purify", "n", *metric_names):
        table.add_column(column)
    for s in result.summary:
        table.add_row(s["method"], s["purify"], str(s["n"]), *(stat_text(s[m], s["n"]) for m in metric_names))
    out_console.print(table)
    if result.failed:  # a bad input was named (warning) and the others evaluated: exit 1, like `run`
        raise typer.Exit(1)


@one_line_errors
def verify_command(
    protected: Annotated[Path, typer.Argument(help="The protected photo.", show_default=False)],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="A photo of the same person.")],
    fr: Annotated[Optional[str], typer.Option("--fr", help="Comma-separated face models (default: all installed).")]
    = None,
    purify: Annotated[Optional[str], typer.Option(
        help="Comma-separated purifications to try (default: "
             "none,jpeg90,jpeg75,jpeg60,blur,rotate,resize).", show_default=False)] = None,
    attacked: Annotated[Optional[str], typer.Option(
        help="Comma-separated face models the protection attacked; the others are reported as held out "
             "(default: not stated; a protected photo does not record it).", show_default=False)] = None,
    crops: Annotated[str, typer.Option(
        help="Crops each model reads the faces through: own (its own alignment) and template (the ArcFace "
             "5-point template most services use).")] = "own,template",
    weights_dir: WeightsDirOpt = None,
    disable_plugin: DisableOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Distances and match / no-match under every installed face model, through its own crop and another
    pipeline's, before and after purification.

    Exit code 0 when no face model matches the protected photo to the reference under any crop or purification."""
    from guardkit.config import RunConfig
    from guardkit.engine import DEFAULT_VERIFY_PURIFY, Engine
    from guardkit.verify import verify

    engine = Engine(disabled=disable_plugin or ())
    rows = verify(engine, protected, reference, face_models=_names(fr) if fr else None,
                  purify=DEFAULT_VERIFY_PURIFY if purify is None else _names(purify),
                  run=RunConfig(weights_dir=weights_dir), attacked=_names(attacked) if attacked else None,
                  crops=_names(crops), on_warning=warn)
    if as_json:
        out_console.print_json(json.dumps([{"face_model": r.face_model, "crop": r.crop, "purify": r.purify,
                                            "distance": None if math.isnan(r.distance) else r.distance,
                                            "threshold": r.threshold, "metric": r.metric, "decision": r.decision,
                                            "attacked": r.attacked, "role": r.role}
                                           for r in rows]))
    else:
        table = Table(title=f"{protected.name} vs {reference.name}")
        for column in ("face model", "role", "crop", "purification", "distance", "threshold", "decision"):
            table.add_column(column, no_wrap=column in ("role", "decision"))
        for r in rows:
            table.add_row(r.face_model, r.role, r.crop, r.purify,
                          "-" if math.isnan(r.distance) else f"{r.distance:.3f}",
                          f"{r.threshold:g} ({r.metric})", r.decision)
        out_console.print(table)
    if any(r.decision == "match" for r in rows):
        raise typer.Exit(1)
