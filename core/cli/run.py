"""``guardkit run``: protect photos with a method, write them to a folder, print a summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from guardkit.cli._options import (
    EXIT_FAILED_PHOTOS, DisableOpt, EncoderOpt, FaceFinderOpt, JsonOpt, MethodOpt, WeightsDirOpt,
    err_console, one_line_errors, warn, out_console, progress,
)
from guardkit.config import Budget, RunConfig, parse_fraction
from guardkit.ensemble import parse_models
from guardkit.errors import ConfigError
from guardkit.specs import number
from guardkit.strength import stronger_strength

if TYPE_CHECKING:
    from guardkit.engine import Engine


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a pair without ``=`` is a one-line error."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must look like NAME=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def parse_losses(values: list[str] | None) -> tuple[dict[str, float], dict[str, dict]]:
    """``--loss NAME[:key=value,...]=WEIGHT`` values -> ({name: weight}, {name: options}).

    The weight follows the last ``=``; before it stands a part spec as everywhere else (``parse_spec``):
    ``lpips=1`` -> lpips at weight 1; ``lpips:net=vgg=1`` -> lpips with net vgg at weight 1;
    ``lpips:net=vgg,random_heads=true=0.5``. A loss named twice is a one-line error."""
    from guardkit.specs import parse_spec

    weights: dict[str, float] = {}
    options: dict[str, dict] = {}
    for value in values or []:
        spec, sep, weight = value.rpartition("=")
        if not sep or not spec.strip() or not weight.strip():
            raise ConfigError(f"--loss must look like NAME=WEIGHT or NAME:key=value=WEIGHT, got {value!r}")
        try:
            number_weight = float(parse_fraction(weight))
        except ConfigError:
            raise ConfigError(f"--loss {value!r}: the weight after the last '=' must be a number, got "
                              f"{weight.strip()!r} (write NAME:key=value=WEIGHT)") from None
        name, opts = parse_spec(spec)
        if name in weights:
            raise ConfigError(f"--loss names {name!r} twice")
        weights[name] = number_weight
        if opts:
            options[name] = opts
    return weights, options


@one_line_errors
def run_command(
    inputs: Annotated[list[str], typer.Argument(help="Photos or folders of photos (with --ray, also fsspec URLs).",
                                                show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the protected photos (with --ray, also "
                                                                "an fsspec URL).")],
    method: MethodOpt = None,
    face_model: Annotated[Optional[str], typer.Option(
        "--fr", help="Face recognition model(s) to protect against, comma-separated (default: dlib,facenet for "
                     "methods that take an ensemble, else dlib).")] = None,
    face_finder: FaceFinderOpt = None,
    encoder: EncoderOpt = None,
    strength: Annotated[Optional[str], typer.Option(
        help="low (default: 4/255), mid (8/255) or high (16/255): budget, steps and options of the method's "
             "preset (`guardkit methods show fr-cloak`); --eps, --steps and -O override it.")] = None,
    eps: Annotated[Optional[str], typer.Option(
        help="L-inf cap in [0,1] pixel units; fractions like 4/255 work (default: the strength's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimisation steps (default: the strength's or the method's).")] = None,
    step_size: Annotated[Optional[str], typer.Option(help="First step size (default: the method's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same output.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or auto.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16 (autocast).")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Photos of one size protected together.")] = 1,
    fmt: Annotated[str, typer.Option("--format", help="png (lossless, default) or jpeg.")] = "png",
    loss: Annotated[Optional[list[str]], typer.Option(
        help="NAME=WEIGHT or NAME:key=value,...=WEIGHT (e.g. lpips:net=vgg=1), repeatable "
             "(default: the method's).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-O", help="Method option KEY=VALUE.")] = None,
    resume: Annotated[bool, typer.Option(help="Skip photos already protected in the output folder.")] = True,
    encoder_path: Annotated[Optional[Path], typer.Option(help="Local folder of the encoder's weights.")] = None,
    fr_path: Annotated[Optional[Path], typer.Option(help="Weight file of the face model.")] = None,
    weights_dir: WeightsDirOpt = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's).")] = None,
    disable_plugin: DisableOpt = None,
    as_json: JsonOpt = False,
    ray_address: Annotated[Optional[str], typer.Option(  # issue 15: the same protection on Ray
        "--ray", metavar="ADDRESS",
        help="Run on Ray (the ray extra): local (a Ray started here), auto (the running cluster), HOST:PORT "
             "or ray://HOST:PORT. INPUTS and -o may then be fsspec URLs.")] = None,
    cloak: Annotated[Optional[Path], typer.Option(
        help="A person's cloak from `guardkit enroll`: put it on their face instead of optimising "
             "(well under a second a photo).")] = None,
    refine: Annotated[int, typer.Option(
        help="With --cloak: this many per-photo optimisation steps from the cloak (stronger, slower).")] = 0,
    face: Annotated[str, typer.Option(
        help="With --cloak: the face it goes on: largest, all, or N (the N-th largest).")] = "largest",
    others: Annotated[str, typer.Option(
        help="With --cloak: the other faces are left alone (skip) or protected per photo (protect).")] = "skip",
) -> None:
    """Protect every face in INPUTS and write the results to OUTPUT (PNG, metadata stripped)."""
    from guardkit.engine import DEFAULT_METHOD, Engine
    from guardkit.ray_batch import is_url

    urls = [p for p in (*inputs, output) if is_url(p)]
    if urls and ray_address is None:
        raise ConfigError(f"{urls[0]}: URLs are read and written on Ray only: add --ray local (or a cluster "
                          "address), or give a local path")
    # str, not Path, up to here: a Path folds a URL's '//' (s3://b -> s3:/b)
    sources = [p if is_url(p) else Path(p) for p in inputs]
    output_dir = output if is_url(output) else Path(output)
    method = DEFAULT_METHOD if method is None else method
    if fmt not in ("png", "jpeg"):
        raise ConfigError(f"--format must be png or jpeg, got {fmt!r}")
    engine = Engine(disabled=disable_plugin or ())
    for error in engine.errors:
        warn(str(error))
    base = RunConfig(device=device, dtype=dtype, seed=seed, batch_size=batch_size, weights_dir=weights_dir,
                     budget=Budget(step_size=parse_fraction(step_size) if step_size else None), threads=threads)
    options = {k: number(v) for k, v in parse_pairs(option, "--option").items()}
    eps_value = parse_fraction(eps) if eps else None
    # Engine.protect resolves strength, eps and steps itself (one set of defaults for the CLI and the API);
    # the same call here gives the budget for the progress bar before the run starts
    budget = engine.resolve_strength(method, base, strength, options, eps=eps_value, steps=steps)[0].budget
    loss_weights, loss_options = parse_losses(loss)
    losses = loss_weights or None
    part_options = {"encoder": {"path": str(encoder_path)} if encoder_path else {},
                    "face_model": {"path": str(fr_path)} if fr_path else {}, "loss": loss_options}
    with progress() as bar:
        task = bar.add_task("photos", total=None)
        steps_task = bar.add_task("steps", total=budget.steps)
        protect = engine.protect
        if ray_address is not None:  # issue 15: the same Engine.protect, in Ray actors
            from guardkit.ray_batch import check_address, protect_on

            protect = protect_on(check_address(ray_address))
        with_cloak = {"cloak": cloak, "refine": refine, "cloak_face": face, "others": others} if cloak else {}
        if with_cloak and ray_address is not None:  # read and checked here, once: the actors get the checked cloak
            from guardkit.cloak_file import load_cloak

            with_cloak["cloak"] = load_cloak(cloak)
        result = protect(
            sources, method=method, face_model=parse_models(face_model) or None, face_finder=face_finder, encoder=encoder, run=base,
            strength=strength, eps=eps_value, steps=steps, losses=losses, options=options, part_options=part_options, output_dir=output_dir, fmt=fmt, resume=resume,
            on_start=lambda n: bar.update(task, total=n),
            on_photo=lambda photo: bar.advance(task),
            on_step=lambda step, steps: bar.update(steps_task, completed=step, total=steps), **with_cloak,
        )
    budget = result.budget or budget
    for photo in result.photos:  # one line per bad input (missing, broken link, unreadable, no face, ...)
        if photo.status == "failed":
            err_console.print(f"[red]failed:[/] {escape(photo.error)}", highlight=False, soft_wrap=True)
        elif photo.note:
            err_console.print(f"[yellow]note:[/] {escape(photo.note)}", highlight=False, soft_wrap=True)
    if as_json:
        out_console.print_json(json.dumps({
            "method": result.method or method, "face_models": list(result.thresholds), "eps": budget.eps, "steps": budget.steps,
            "strength": strength, "thresholds": result.thresholds,
            "photos": [{"source": str(p.source), "status": p.status, "output": str(p.output) if p.output else None,
                        "error": p.error, "note": p.note, "faces": p.faces, "linf": p.linf, "psnr": _finite(p.psnr),
                        "distances": {m: _finite(d) for m, d in p.distances.items()}, "seconds": p.seconds} for p in result.photos],
        }))
    else:
        out_console.print(summary_table(result, result.method or method, budget))
        advice = stronger_advice(engine, result, result.method or method, budget)
        if advice:
            err_console.print(f"[yellow]note:[/] {escape(advice)}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(EXIT_FAILED_PHOTOS)


def stronger_advice(engine: Engine, result, method: str, budget: Budget) -> str:
    """One line when a protected photo's face is still within an attacked model's match threshold of the
    original photo (the table's MATCH), naming the next stronger preset of the method; "" otherwise."""
    per_photo = [{m for m in reported_models(result) if match_of(result, p, m)[1]}
                 for p in result.photos if p.status == "protected"]
    per_photo = [models for models in per_photo if models]
    if not per_photo:
        return ""
    photos = "1 photo still matches" if len(per_photo) == 1 else f"{len(per_photo)} photos still match"
    line = (f"{photos} the original under {', '.join(sorted(set().union(*per_photo)))} at eps "
            f"{budget.eps * 255:.3g}/255")
    stronger = stronger_strength(engine.registry.get("method", method).factory, budget.eps)
    if stronger is None:
        return line + "; check them with guardkit verify against another photo of the person"
    name, preset = stronger
    return (line + f"; --strength {name} (eps {preset.eps * 255:.3g}/255) protects more, and guardkit verify "
            "checks a photo against another photo of the person")


def reported_models(result) -> list[str]:
    """The face models a run reports a distance for: every attacked model, or the single model of older runners."""
    return list(result.thresholds) or ([result.face_model] if result.face_model else [])


def match_of(result, photo, model: str) -> tuple[float, bool | None]:
    """``photo``'s clean-vs-protected distance under ``model`` (nan when not reported) and whether it is within the
    model's match threshold (None when the distance or the threshold is unknown)."""
    d = photo.distances.get(model, math.nan) if photo.distances else \
        (photo.fr_distance if model == result.face_model else math.nan)
    threshold = result.thresholds.get(model, result.threshold)
    if math.isnan(d) or not math.isfinite(threshold):
        return d, None
    from guardkit.verify import is_match  # one rule for a match everywhere: distance below the threshold

    return d, is_match(d, threshold)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summary_table(result, method: str, budget: Budget) -> Table:
    models = reported_models(result)
    against = " + ".join(models) or "no face model"
    table = Table(title=f"{method} vs {against}, eps {budget.eps * 255:.3g}/255, {budget.steps} steps")
    for column in ("photo", "status", "faces", "L-inf (/255)", "PSNR dB", *(f"{m} distance" for m in models), "s"):
        table.add_column(column)
    for p in result.photos:
        done = p.status == "protected"
        cells = []
        for m in models:
            d, matched = match_of(result, p, m)
            cell = "" if math.isnan(d) else f"{d:.3f}"
            if matched is not None:
                cell += " (MATCH)" if matched else " (no match)"
            cells.append(cell)
        table.add_row(p.source.name, p.status if not p.error else "failed", str(p.faces) if done else "",
                      f"{p.linf * 255:.0f}" if done else "", f"{p.psnr:.1f}" if done else "", *cells,
                      f"{p.seconds:.1f}" if done else "")
    return table
