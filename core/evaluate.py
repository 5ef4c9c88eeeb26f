"""``guardkit eval``: protect, purify, edit and score, over photos x methods x purifications x prompts x seeds.

Every photo is first cut to a square around its faces and resized to ``size`` (the paper's
512x512 portraits), so protections, editors and metrics all see the same pixels. Intermediate images
are cached under the output folder and every scored sample is appended to ``samples.csv`` as soon as
it is done, so an interrupted run resumes where it stopped. ``summary.json`` holds mean +- std per
(method, purification, metric); ``report.html`` an image grid and bar charts.

The editor ``none`` skips editing: the metrics then compare the protected photo itself with the
source (``edited`` = protected, ``edited_clean`` = source), which answers "does FR still match it?".
"""

from __future__ import annotations

import csv
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, GuardkitError, NoFaceError
from guardkit.imageio import collect_inputs, is_done, load_rgb, save_image
from guardkit.prompts import prompt_group
from guardkit.arrays import image_to_tensor, tensor_to_image
from guardkit.types import EvalBatch, Face

CSV_KEYS = ("photo", "method", "purify", "prompt", "seed")
TEXT_KEYS = ("group", "purify_seed")  # further text columns of samples.csv


def purification_seed(run_seed: int, photo: str, seed: int) -> int:
    """The seed of one sample's purification draws (rotation angle, colour jitter, DiffPure noise): one per
    (run seed, photo, sample seed), so photos and seeds get their own draws; written to samples.csv."""
    import zlib

    return zlib.crc32(f"{run_seed}|{photo}|{seed}".encode()) & 0x7FFFFFFF


def purification_generator(run_seed: int, photo: str, seed: int, device: Any):
    """A torch generator on ``device`` seeded with ``purification_seed``."""
    import torch

    return torch.Generator(device=device).manual_seed(purification_seed(run_seed, photo, seed))


@dataclass
class EvalConfig:
    methods: Sequence[str] = ("fr-cloak",)
    editor: str = "none"
    prompts: Sequence[str] = ("",)
    purify: Sequence[str] = ("none",)
    face_models: Sequence[str] = ("dlib",)
    metrics: Sequence[str] | None = None  # None: every metric that loads
    seeds: Sequence[int] = (0,)
    size: int = 512
    encoder: str | None = None
    ensemble: Sequence[str] = ("dlib",)  # face models the methods attack; others are reported as held out
    face_parser: str = "landmarks"  # the edit methods' face parser (as ``guardkit edit --parser``)
    fr_redetect: bool = True  # FR metrics find the faces again (FaceLock's evaluation), else source landmarks
    fars: Sequence[float] = (0.1, 0.01, 0.001)  # asr also at these false-accept rates, where a model has thresholds
    target_identity: str | Path | None = None  # a photo of another person: impersonation ASR (Flux-Guard's protocol)
    method_options: dict[str, Any] = field(default_factory=dict)
    editor_options: dict[str, Any] = field(default_factory=dict)
    part_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # for the methods' parts


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    unavailable: dict[str, str]
    out_dir: Path
    failed: list[str] = field(default_factory=list)  # one line per input that gave no sample (missing, no face...)


def _edit(editor, image: np.ndarray, prompt: str, seed: int, device) -> np.ndarray:
    """The editor's output at the evaluation size (editors may work at their own resolution)."""
    return _fit(editor.edit(image_to_tensor(image, device), prompt, seed=seed), image)


def _fit(edited, like: np.ndarray) -> np.ndarray:
    import torch.nn.functional as F

    if edited.shape[-2:] != like.shape[:2]:
        edited = F.interpolate(edited.float(), size=like.shape[:2], mode="bilinear", align_corners=False,
                               antialias=True)
    return tensor_to_image(edited)


def _target_kwargs(target: Any) -> dict[str, Any]:
    return {} if target is None else {"target_embeddings": target}


def _clean_of(method: str, report: Any, like: np.ndarray) -> np.ndarray:
    """An edit method's clean baseline from its report (``report.clean``), at the evaluation size."""
    clean = getattr(report, "clean", None)
    if clean is None:
        raise ConfigError(f"edit method {method!r} reports no clean edit ('clean') to score its edit against")
    return _fit(clean, like)


def square_portrait(image: np.ndarray, faces: Sequence[Face], size: int) -> tuple[np.ndarray, list[Face]]:
    """The face-centred square of ``image`` resized to ``size`` x ``size``, and its faces moved with it."""
    from guardkit.region import ModelSpace

    space = ModelSpace.around(image.shape[0], image.shape[1], faces, size)
    square = space.to_model(space.crop(image_to_tensor(image, "cpu")))
    return tensor_to_image(square), space.faces(faces)


class _Cache:
    """PNG files under the output folder: load when done, else compute and save atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, parts: Sequence[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.root.joinpath(*[_slug(p) for p in parts]).with_suffix(".png")
        if is_done(path):
            return load_rgb(path)
        array = compute()
        save_image(array, path)
        return array


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip())
    return keep[:80] or "_"


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: v if k in CSV_KEYS or k in TEXT_KEYS else _parse_float(v) for k, v in row.items()}
                for row in csv.DictReader(fh)]


def _parse_float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _row_key(row: dict[str, Any]) -> tuple:
    return tuple(str(row[k]) for k in CSV_KEYS)


def attacked_models(engine, config: EvalConfig) -> dict[str, list[str]]:
    """method -> the face models its protection attacks: every ``config.ensemble`` model for methods that
    accept an ensemble and for edit methods, only ``ensemble[0]`` for methods that take one face model,
    none for methods that need no face model (encoder attacks) and for ``none``."""
    edit_methods = set(engine.registry.names("edit_method"))
    out: dict[str, list[str]] = {}
    for method in config.methods:
        if method == "none":
            out[method] = []
        elif method in edit_methods:
            out[method] = list(config.ensemble)
        else:
            capabilities = engine.registry.get("method", method).capabilities
            if "face_model" not in set(capabilities.get("needs", ())):
                out[method] = []
            else:
                ensemble = capabilities.get("accepts_ensemble", False)
                out[method] = list(config.ensemble if ensemble else config.ensemble[:1])
    return out


def held_out_note(model: str, attacked: dict[str, list[str]]) -> str:
    """The label suffix of a face model's columns: "" when every protection attacked it, " (held-out)" when
    none did, " (held-out for a, b)" naming the methods that did not (rows of several methods share a column)."""
    protections = [m for m in attacked if m != "none"]
    outside = [m for m in protections if model not in attacked[m]]
    if not outside:
        return ""
    return " (held-out)" if len(outside) == len(protections) else f" (held-out for {', '.join(outside)})"


def summarise(rows: list[dict[str, Any]], metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """mean, std and n of every metric per (method, purify), NaNs left out."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["purify"]), []).append(row)
    out = []
    for (method, purify), members in groups.items():
        entry: dict[str, Any] = {"method": method, "purify": purify, "n": len(members)}
        for name in metric_names:
            values = [float(r[name]) for r in members if name in r and isinstance(r[name], float)
                      and math.isfinite(r[name])]
            entry[name] = {"mean": statistics.fmean(values) if values else math.nan,
                           "std": statistics.pstdev(values) if len(values) > 1 else 0.0 if values else math.nan,
                           "n": len(values)}
        out.append(entry)
    return out


def _metric_variants(name: str, model_name: str | None, model: Any, finder: Any, config: EvalConfig,
                     attacked: dict[str, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """(column label, metric options) for one metric and face model: the FR metrics with the alignment of
    ``config.fr_redetect``; ``asr`` at the model's own threshold and at each of ``config.fars``, dodging
    and, with a target identity, impersonation."""
    if model_name is None:
        return [(name, {})]
    note = held_out_note(model_name, attacked)
    options: dict[str, Any] = {"face_model": model, "model": model_name, "redetect": config.fr_redetect}
    scheme = getattr(finder, "scheme", None)
    if finder is not None and scheme in getattr(model, "schemes", (scheme,)):
        options["face_finder"] = finder  # the finder that found the source's faces, where the model reads its landmarks
    if name != "asr":
        return [(f"{name}@{model_name}{note}", options)]
    out = []
    targets = [("asr", None)] + ([("asr-impersonation", config.target_identity)] if config.target_identity else [])
    for label, target in targets:
        extra = {"target": target} if target is not None else {}
        out.append((f"{label}@{model_name}{note}", {**options, **extra}))
        out += [(f"{label}@{model_name} FAR {far:g}{note}", {**options, **extra, "far": far}) for far in config.fars]
    return out


def evaluate(engine, inputs: Sequence[str | Path], config: EvalConfig, out_dir: str | Path, *,
             run: RunConfig | None = None, on_sample: Callable[[int, int], None] | None = None,
             on_warning: Callable[[str], None] | None = None) -> EvalResult:
    """Run the grid and write ``samples.csv``, ``summary.json`` and ``report.html`` to ``out_dir``."""
    import torch

    run = run or RunConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = run.torch_device()
    warn = on_warning or (lambda message: None)
    cache = _Cache(out / "images")
    bad: list[tuple[Path, str]] = []  # a missing path, a broken link, ...: named, never a stop
    paths = collect_inputs([Path(p) for p in inputs], bad)
    failed = [message for _, message in bad]
    for message in failed:
        warn(message)

    # Parts that every sample shares: finder, editor, purifiers, metrics (unavailable ones reported).
    finder = engine.load_part("face_finder", "dlib", run)
    editor = engine.load_part("editor", config.editor, run, **config.editor_options) if config.editor != "none" \
        else None
    purifiers = {spec: engine.load_purifier(spec, run) for spec in config.purify}
    unavailable: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    face_model_parts = {}
    for name in config.face_models:
        try:
            face_model_parts[name] = engine.load_part("face_model", name, run)
        except GuardkitError as exc:
            unavailable[f"face model {name}"] = str(exc)
    wanted = list(config.metrics) if config.metrics is not None else engine.registry.names("metric")
    attacked = attacked_models(engine, config)
    remembering = _RememberingFinder(finder, "dlib")
    for name in wanted:
        spec = engine.registry.get("metric", name)
        uses_face_model = name in ("fr", "fr-distance", "asr")
        for model_name, model in (face_model_parts.items() if uses_face_model else [(None, None)]):
            for label, options in _metric_variants(name, model_name, model, remembering, config, attacked):
                try:
                    metric = spec.factory(run, **options)
                    metric.load()
                    metrics[label] = metric
                except GuardkitError as exc:
                    if "no published FAR thresholds" in str(exc):  # said once per model, not once per FAR
                        unavailable[f"metric {name} at FAR {', '.join(f'{f:g}' for f in config.fars)} for "
                                    f"{model_name}"] = str(exc)
                    else:
                        unavailable[f"metric {label}"] = str(exc)
    for what, why in unavailable.items():
        warn(f"{what} unavailable: {why}")

    protectors: dict[str, Any] = {}
    edit_methods = set(engine.registry.names("edit_method"))
    for method in config.methods:
        if method in edit_methods and editor is None:
            raise ConfigError(f"edit method {method!r} edits the photo: give it an --editor (flux-edit)")

    def protect(method: str, square: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        from guardkit.attack import project

        if method not in protectors:
            ensemble = engine.registry.get("method", method).capabilities.get("accepts_ensemble", False)
            protectors[method] = engine.build_method(
                method, run, face_model=list(config.ensemble) if ensemble else config.ensemble[0],
                encoder=config.encoder, options=config.method_options, part_options=config.part_options).method
        clean = image_to_tensor(square, device)
        return tensor_to_image(project(protectors[method].protect(clean, faces, run.budget).detach().float(), clean,
                                 run.budget))

    def edit_protector(method: str) -> Any:
        if method not in protectors:
            models = [engine.registry.get("face_model", n).factory(run) for n in config.ensemble]
            parser = engine.registry.get("face_parser", config.face_parser).factory(run)
            protectors[method] = engine.registry.get("edit_method", method).factory(
                run, editor=editor, face_models=models, face_parser=parser, **config.method_options)
            protectors[method].load()
        return protectors[method]

    targets: dict[str, Any] = {}

    def target_of(method: str) -> Any:
        """The edit method's target identity (impersonation) from ``config.target_identity``, or None."""
        if config.target_identity is None:
            return None
        if method not in targets:
            image = load_rgb(Path(config.target_identity))
            found = finder.find(image)
            if not found:
                raise NoFaceError(f"{config.target_identity}: no face found in the target identity photo")
            targets[method] = edit_protector(method).identity(image_to_tensor(image, device), found[:1])
        return targets[method]

    def guarded_key(method: str) -> str:  # an impersonating edit is cached apart from a dodging one
        return method if config.target_identity is None else f"{method}-to-{Path(config.target_identity).stem}"

    def guarded_edit(method: str, square: np.ndarray, faces: Sequence[Face], prompt: str, seed: int,
                     stem: str) -> np.ndarray:
        """An edit method's privacy-preserving edit, against the ensemble of ``config.ensemble``; its clean
        baseline (the same trajectory, controls and sampler without the adversarial stage: the report's
        ``clean``) is cached beside it, so PSNR/SSIM/LPIPS/CLIP-S measure the protection alone."""
        edited, report = edit_protector(method).protect(image_to_tensor(square, device), faces, prompt, seed=seed,
                                                        **_target_kwargs(target_of(method)))
        cache.get(["guarded-clean", guarded_key(method), stem, _slug(prompt), str(seed)],
                  lambda: _clean_of(method, report, square))
        return _fit(edited, square)

    def guarded_clean(method: str, square: np.ndarray, faces: Sequence[Face], prompt: str, seed: int) -> np.ndarray:
        """The clean trajectory alone, when its cached copy is missing (a folder from an older run)."""
        _, report = edit_protector(method).protect(image_to_tensor(square, device), faces, prompt, seed=seed,
                                                   **_target_kwargs(target_of(method)))
        return _clean_of(method, report, square)

    def purified(image: np.ndarray, purifier: Any, photo: str, seed: int) -> np.ndarray:
        generator = purification_generator(run.seed, photo, seed, device)
        return tensor_to_image(purifier.purify(image_to_tensor(image, device), generator))

    def samples(path: Path, square: np.ndarray, faces: Sequence[Face]):
        """(key, thunk) per sample; the thunk computes (protected, edited, edited_clean) only when needed."""
        stem = path.stem

        def clean_edit(prompt: str, seed: int) -> np.ndarray:
            if editor is None:
                return square
            return cache.get(["edits", "clean", stem, _slug(prompt), str(seed)],
                             lambda: _edit(editor, square, prompt, seed, device))

        for method in config.methods:
            for spec, purifier in purifiers.items():
                for prompt in config.prompts:
                    for seed in config.seeds:
                        key = (path.name, method, spec, prompt, str(seed))
                        if method in edit_methods:  # the edit is the protection; purified after editing
                            def thunk(method=method, spec=spec, purifier=purifier, prompt=prompt, seed=seed):
                                raw = cache.get(["guarded", guarded_key(method), stem, _slug(prompt), str(seed)],
                                                lambda: guarded_edit(method, square, faces, prompt, seed, stem))
                                baseline = cache.get(  # written by guarded_edit; computed again if missing
                                    ["guarded-clean", guarded_key(method), stem, _slug(prompt), str(seed)],
                                    lambda: guarded_clean(method, square, faces, prompt, seed))
                                seen = raw if purifier is None else cache.get(
                                    ["guarded-purified", guarded_key(method), spec, stem, _slug(prompt), str(seed)],
                                    lambda: purified(raw, purifier, path.name, seed))
                                return seen, seen, baseline
                        else:  # protect, purify, then edit
                            def thunk(method=method, spec=spec, purifier=purifier, prompt=prompt, seed=seed):
                                protected = square if method == "none" else cache.get(
                                    ["protected", method, stem], lambda: protect(method, square, faces))
                                seen = protected if purifier is None else cache.get(
                                    ["purified", method, spec, stem, str(seed)],
                                    lambda: purified(protected, purifier, path.name, seed))
                                if editor is None:
                                    return seen, seen, square
                                edited = cache.get(["edits", method, spec, stem, _slug(prompt), str(seed)],
                                                   lambda: _edit(editor, seen, prompt, seed, device))
                                return seen, edited, clean_edit(prompt, seed)
                        yield key, thunk

    csv_path = out / "samples.csv"
    rows = _read_rows(csv_path)
    done = {_row_key(r) for r in rows}
    fieldnames = [*CSV_KEYS, "group", "purify_seed", *metrics]
    if rows and list(rows[0]) != fieldnames:
        warn(f"{csv_path} was written with other metrics; starting it again")
        rows, done = [], set()
    write_header = not rows
    per_photo = len(config.methods) * len(config.purify) * len(config.prompts) * len(config.seeds)
    total, count = len(paths) * per_photo, 0
    with open(csv_path, "w" if write_header else "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        if write_header:
            writer.writeheader()
        for path in paths:
            try:
                photo = load_rgb(path)
                faces = finder.find(photo)
                if not faces:
                    raise NoFaceError(f"{path}: no face found")
            except GuardkitError as exc:
                warn(str(exc))
                failed.append(str(exc))
                count += per_photo
                continue
            square, square_faces = square_portrait(photo, faces, config.size)
            square = cache.get(["source", path.stem], lambda: square)
            source = image_to_tensor(square, device)
            for key, thunk in samples(path, square, square_faces):
                count += 1
                if key in done:
                    continue
                seen, edited, edited_clean = thunk()
                batch = EvalBatch(source=source, protected=image_to_tensor(seen, device), edited=image_to_tensor(edited, device),
                                  edited_clean=image_to_tensor(edited_clean, device), prompt=key[3], faces=square_faces)
                row: dict[str, Any] = dict(zip(CSV_KEYS, key))
                row["group"] = prompt_group(key[3])
                row["purify_seed"] = str(purification_seed(run.seed, key[0], int(key[4])))
                with torch.no_grad():
                    for label, metric in metrics.items():
                        row[label] = float(metric.score(batch).float().mean())
                writer.writerow(row)
                fh.flush()
                rows.append(row)
                done.add(key)
                if on_sample:
                    on_sample(count, total)
    summary = summarise(rows, list(metrics))
    notes = {"attacked": attacked, "fr_alignment": fr_alignment(metrics, config),
             "target_identity": str(config.target_identity) if config.target_identity else None}
    (out / "summary.json").write_text(json.dumps({"summary": summary, "unavailable": unavailable, **notes}, indent=2,
                                                 default=_json_float))
    write_report(out, summary, list(metrics), config, notes)
    return EvalResult(rows, summary, unavailable, out, failed)


def fr_alignment(metrics: dict[str, Any], config: EvalConfig) -> str:
    """How the FR metrics aligned the edits' faces, in words, per face-model column (``report.html``,
    ``summary.json``): re-detected (with how many faces fell back to the source's landmarks) or not."""
    said = {label.split(" ")[0]: m.alignment for label, m in metrics.items() if hasattr(m, "alignment")}
    if said:
        return "; ".join(f"{label}: {alignment}" for label, alignment in said.items())
    return ("re-detected on the edit (FaceLock's evaluation)" if config.fr_redetect
            else "aligned at the source's landmarks") + "; no FR metric ran"


class _RememberingFinder:
    """A face finder that remembers its last answers, so that the FR metrics of one sample (fr, fr-distance,
    asr at each FAR) find the faces of one edit once."""

    def __init__(self, finder: Any, name: str, size: int = 4) -> None:
        self.finder, self.name, self.scheme, self.size = finder, name, getattr(finder, "scheme", None), size
        self.answers: dict[tuple, list[Face]] = {}

    def load(self) -> None:
        self.finder.load()

    def find(self, image: np.ndarray) -> list[Face]:
        import hashlib

        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest())
        if key not in self.answers:
            if len(self.answers) >= self.size:
                self.answers.pop(next(iter(self.answers)))
            self.answers[key] = list(self.finder.find(image))
        return self.answers[key]


def _json_float(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def write_report(out: Path, summary: list[dict[str, Any]], metric_names: Sequence[str], config: EvalConfig,
                 notes: dict[str, Any] | None = None) -> Path:
    """``report.html``: the summary table, one bar chart per metric (inline SVG), and an image grid."""
    def cell(stat: dict[str, Any]) -> str:
        return "-" if not math.isfinite(stat["mean"]) else f"{stat['mean']:.3f} &plusmn; {stat['std']:.3f}"

    head = "".join(f"<th>{html.escape(m)}</th>" for m in metric_names)
    body = "".join(
        f"<tr><td>{html.escape(s['method'])}</td><td>{html.escape(s['purify'])}</td><td>{s['n']}</td>"
        + "".join(f"<td>{cell(s[m])}</td>" for m in metric_names) + "</tr>" for s in summary)
    charts = "".join(_bar_chart(name, [(f"{s['method']}/{s['purify']}", s[name]["mean"]) for s in summary])
                     for name in metric_names)
    grid = []
    images = out / "images"
    for source in sorted((images / "source").glob("*.png"))[:12]:
        stem = source.stem
        cells = [("source", source)]
        for method in config.methods:
            cells.append((f"protected: {method}", images / "protected" / _slug(method) / f"{stem}.png"))
        edits = sorted((images / "edits" / "clean" / stem).rglob("*.png"))[:1]
        for edit in edits:
            cells.append(("edited clean", edit))
            rel = edit.relative_to(images / "edits" / "clean")
            for method in config.methods:
                for spec in config.purify:
                    cells.append((f"edited {method}/{spec}", images / "edits" / _slug(method) / _slug(spec) / rel))
        row = "".join(f"<figure><img src='{html.escape(str(p.relative_to(out)))}'><figcaption>{html.escape(t)}"
                      f"</figcaption></figure>" for t, p in cells if p.exists())
        grid.append(f"<div class='row'>{row}</div>")
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>guardkit eval</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}
.row{{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:12px}} figure{{margin:0}} img{{width:160px}}
figcaption{{font-size:11px;max-width:160px}}</style></head><body>
<h1>guardkit evaluation</h1><p>editor: {html.escape(config.editor)}; prompts: {len(config.prompts)};
seeds: {len(config.seeds)}; face models: {html.escape(', '.join(config.face_models))}</p>
{_notes_html(notes or {})}
<table><tr><th>method</th><th>purify</th><th>n</th>{head}</tr>{body}</table>
<h2>Charts</h2>{charts}<h2>Images</h2>{''.join(grid)}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def _notes_html(notes: dict[str, Any]) -> str:
    """Which face models each method attacked, how FR aligned the edits, the impersonation target."""
    items = []
    if notes.get("attacked"):
        items.append("attacked face models: " + "; ".join(
            f"{m}: {', '.join(models) or 'none'}" for m, models in notes["attacked"].items()))
    if notes.get("fr_alignment"):
        items.append(f"FR alignment: {notes['fr_alignment']}")
    if notes.get("target_identity"):
        items.append(f"impersonation target: {notes['target_identity']}")
    return "".join(f"<p class='note'>{html.escape(item)}</p>" for item in items)


def _bar_chart(title: str, bars: list[tuple[str, float]]) -> str:
    finite = [v for _, v in bars if math.isfinite(v)]
    if not finite:
        return ""
    top = max(abs(v) for v in finite) or 1.0
    height = 22 * len(bars) + 30
    rects = []
    for i, (label, value) in enumerate(bars):
        width = 0 if not math.isfinite(value) else 300 * abs(value) / top
        y = 25 + 22 * i
        rects.append(f"<text x='0' y='{y + 14}' font-size='11'>{html.escape(label)}</text>"
                     f"<rect x='180' y='{y}' width='{width:.1f}' height='16' fill='#4a7'/>"
                     f"<text x='{185 + width:.1f}' y='{y + 13}' font-size='11'>{value:.3f}</text>")
    return (f"<svg width='560' height='{height}'><text x='0' y='14' font-weight='bold'>{html.escape(title)}</text>"
            f"{''.join(rects)}</svg>")
