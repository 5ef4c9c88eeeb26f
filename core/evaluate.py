"""``guardkit eval``: protect, purify, edit and score, over photos x methods x purifications x prompts x seeds.

Every photo is first cut to a square around its faces and resized to ``size`` (the paper's
512x512 portraits), so protections, editors and metrics all see the same pixels. Photos go through the
shared photo loop (``guardkit.photo_loop``): a photo that cannot be read, has no face or fails on the way
is named in one line and the others go on; each protection is projected onto its budget, checked finite
and rounded to 8 bits, as ``guardkit run`` writes it, under the same defaults (``Engine.resolve_strength``).
Intermediate images are cached under the output folder (written atomically; a cached image of another size
is made again) and a photo's scored samples are appended to ``samples.csv`` once all of them are done, so an
interrupted run resumes where it stopped. Photos are keyed by ``photo_id`` (name and a hash of the resolved
path: ``a/p.jpg`` and ``b/p.jpg`` stay apart). The folder's ``settings.json`` records what changes a sample
(``run_settings``); a run under other settings is refused (``restart`` starts the folder over). ``summary.json``
holds mean +- std per (method, purification, metric) over the photos of this run that did not fail, and the
failed inputs; ``report.html`` an image grid and bar charts (``guardkit.eval_report``).

The editor ``none`` skips editing: the metrics then compare the protected photo itself with the
source (``edited`` = protected, ``edited_clean`` = source), which answers "does FR still match it?".
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from guardkit.arrays import image_to_tensor, tensor_to_image
from guardkit.config import RunConfig
from guardkit.engine import DEFAULT_EDITOR, DEFAULT_FACE_FINDER, DEFAULT_FACE_MODEL, DEFAULT_FACE_PARSER, DEFAULT_METHOD
from guardkit.enrolment import find_all
from guardkit.ensemble import finder_of
from guardkit.errors import ConfigError, NoFaceError
from guardkit.eval_metrics import (
    RememberingFinder,
    attacked_models,
    build_metrics,
    fr_alignment,
    held_out_note,
    warn_unavailable,
)
from guardkit.eval_report import slug, summarise, write_report, write_summary
from guardkit.image_read import load_rgb
from guardkit.image_save import is_done, save_image
from guardkit.photo_loop import PHOTO_ERRORS, Photo, PhotoLoop, gather, to_pixels
from guardkit.prompts import prompt_group
from guardkit.protecting import PhotoResult
from guardkit.types import EvalBatch, Face

CSV_KEYS = ("photo", "method", "purify", "prompt", "seed")
TEXT_KEYS = ("group", "purify_seed")  # further text columns of samples.csv
SETTINGS_FILE = "settings.json"
WRITTEN = ("samples.csv", "summary.json", "report.html", SETTINGS_FILE, "images")  # what ``restart`` removes


def photo_id(path: Path) -> str:
    """A photo's key in samples.csv and the image cache: its file name and a short hash of its resolved path,
    so ``a/p.jpg`` and ``b/p.jpg`` (or ``q.jpg`` and ``q.png``) stay apart and the name stays readable."""
    return f"{path.name}#{hashlib.blake2b(str(path.resolve()).encode(), digest_size=4).hexdigest()}"


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
    """The grid. ``strength``, ``eps`` and ``steps`` choose each method's budget as ``guardkit run`` does
    (``Engine.resolve_strength``: by default the method's ``low`` preset or its own step count; a budget
    chosen in the run is kept). ``face_finder`` None: the first ensemble model's own finder (it places the square;
    protections' face models each read their own finder's faces, as in ``guardkit run``)."""

    methods: Sequence[str] = (DEFAULT_METHOD,)
    editor: str = "none"
    prompts: Sequence[str] = ("",)
    purify: Sequence[str] = ("none",)
    face_models: Sequence[str] = (DEFAULT_FACE_MODEL,)
    metrics: Sequence[str] | None = None  # None: every metric that loads
    seeds: Sequence[int] = (0,)
    size: int = 512
    encoder: str | None = None
    ensemble: Sequence[str] = (DEFAULT_FACE_MODEL,)  # face models the methods attack; others are reported as held out
    face_parser: str = DEFAULT_FACE_PARSER  # the edit methods' face parser (as ``guardkit edit --parser``)
    face_finder: str | None = None  # finds the source's faces (the square, the methods' and metrics' faces)
    fr_redetect: bool = True  # FR metrics find the faces again (FaceLock's evaluation), else source landmarks
    fars: Sequence[float] = (0.1, 0.01, 0.001)  # asr also at these false-accept rates, where a model has thresholds
    target_identity: str | Path | None = None  # a photo of another person: impersonation ASR (Flux-Guard's protocol)
    strength: str | None = None
    eps: float | None = None
    steps: int | None = None
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


def _fit(edited, like: np.ndarray) -> np.ndarray:
    """An edit at the evaluation size (editors may work at their own resolution), checked and rounded."""
    import torch.nn.functional as F

    if edited.shape[-2:] != like.shape[:2]:
        edited = F.interpolate(edited.float(), size=like.shape[:2], mode="bilinear", align_corners=False,
                               antialias=True)
    return to_pixels(edited, what="the edit")[0].permute(1, 2, 0).cpu().numpy()


def _target_kwargs(target: Any) -> dict[str, Any]:
    return {} if target is None else {"target_embeddings": target}


def _clean_of(method: str, report: Any, like: np.ndarray) -> np.ndarray:
    """An edit method's clean baseline from its report (``report.clean``), at the evaluation size."""
    clean = getattr(report, "clean", None)
    if clean is None:
        raise ConfigError(f"edit method {method!r} reports no clean edit ('clean') to score its edit against")
    return _fit(clean, like)


def square_portrait(image: np.ndarray, faces: Sequence[Face], size: int,
                    others: Sequence[Face] = ()) -> tuple[np.ndarray, list[Face]]:
    """The square of ``image`` centred on ``faces``, resized to ``size`` x ``size``, and its faces, then
    ``others`` (other finders' faces, which do not place the square), moved with it."""
    from guardkit.region import ModelSpace

    space = ModelSpace.around(image.shape[0], image.shape[1], faces, size)
    square = space.to_model(space.crop(image_to_tensor(image, "cpu")))
    return tensor_to_image(square), space.faces([*faces, *others])


def member_finders(engine, config: EvalConfig) -> list[str]:
    """The face finders whose faces the protections' face models read: each model its own ``default_finder``
    (as ``Engine.build_method`` pairs them); edit methods read the source's faces."""
    edit_methods = set(engine.registry.names("edit_method"))
    models = dict.fromkeys(n for method, names in attacked_models(engine, config).items()
                           if method not in edit_methods for n in names)
    return [finder_of(engine.registry.get("face_model", n).factory, DEFAULT_FACE_FINDER) for n in models]


class _Cache:
    """PNG files under the output folder: load when done (whole, and ``size`` x ``size``), else compute and
    save atomically."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size = root, size

    def get(self, parts: Sequence[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
        *folders, name = [slug(p) for p in parts]
        path = self.root.joinpath(*folders, f"{name}.png")  # not with_suffix: "p.jpg_1a2b" keeps its ".jpg_1a2b"
        if is_done(path, size=(self.size, self.size)):
            return load_rgb(path)
        array = compute()
        save_image(array, path)
        return array


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


def _grid_keys(ids: Sequence[str], config: EvalConfig) -> set[tuple]:
    """The row keys of this run's grid (rows of photos or methods no longer in it are not summarised)."""
    return {(i, m, spec, prompt, str(seed)) for i, m, spec, prompt, seed in
            itertools.product(ids, config.methods, config.purify, config.prompts, config.seeds)}


def run_settings(engine, config: EvalConfig, run: RunConfig) -> dict[str, dict[str, Any]]:
    """What changes a sample's images or scores, its key aside: ``shared`` settings, and per method the budget
    and options it runs under (as ``Engine.resolve_strength`` resolves them, so an eps left out and the same eps
    given agree). The grid's axes (photos, methods, purifications, prompts, seeds) are keys; metric columns are
    checked against samples.csv's header."""
    shared = {"size": config.size, "editor": config.editor, "editor_options": config.editor_options,
              "encoder": config.encoder, "ensemble": list(config.ensemble), "face_parser": config.face_parser,
              "face_finder": config.face_finder, "fr_redetect": config.fr_redetect,
              "target_identity": str(config.target_identity) if config.target_identity else None,
              "part_options": config.part_options, "seed": run.seed, "dtype": run.dtype}
    edit_methods = set(engine.registry.names("edit_method"))
    methods: dict[str, Any] = {}
    for method in config.methods:
        if method == "none":
            methods[method] = {}
            continue
        resolved, options = (run, config.method_options) if method in edit_methods else engine.resolve_strength(
            method, run, config.strength, config.method_options, eps=config.eps, steps=config.steps)
        methods[method] = {**asdict(resolved.budget), **{f"option {k}": v for k, v in options.items()}}
    return json.loads(json.dumps({"shared": shared, "methods": methods}, sort_keys=True, default=str))


def _changed(held: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ: shared ones, and those of the methods both runs have."""
    def differ(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
        return [f"{prefix}{k}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]

    out = differ(held.get("shared", {}), now["shared"])
    for method in sorted(held.get("methods", {}).keys() & now["methods"].keys()):
        out += differ(held["methods"][method], now["methods"][method], f"{method} ")
    return out


def claim_folder(out: Path, settings: dict[str, dict[str, Any]], *, restart: bool) -> None:
    """Make ``out`` hold results of ``settings`` only: with ``restart``, remove what an earlier eval wrote
    there; else refuse (``ConfigError``) a folder whose results were made under other settings. Records the
    settings, with the methods of earlier runs kept."""
    path = out / SETTINGS_FILE
    if restart:
        for name in WRITTEN:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    held: dict[str, Any] = {"shared": settings["shared"], "methods": {}}
    if path.is_file():
        try:
            held = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); choose a new -o, or pass --restart to start over") from None
        changed = _changed(held, settings)
        if changed:
            raise ConfigError(f"{out} holds results made under other settings (changed: {', '.join(changed)}); "
                              "choose a new -o, or pass --restart to start it over")
    elif (out / "samples.csv").is_file() or (out / "images").is_dir():
        raise ConfigError(f"{out} holds results of unknown settings (no {SETTINGS_FILE}); choose a new -o, or pass "
                          "--restart to start it over")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"shared": settings["shared"], "methods": {**held.get("methods", {}),
                                                                          **settings["methods"]}}, indent=2))


class _Grid:
    """The parts every sample shares and the images of one photo's samples, each made once (cached)."""

    def __init__(self, engine, config: EvalConfig, run: RunConfig, images: Path) -> None:
        self.engine, self.config, self.run, self.device = engine, config, run, run.torch_device()
        self.cache = _Cache(images, config.size)
        first = engine.registry.get("face_model", config.ensemble[0]).factory if config.ensemble else None
        self.finder_name = config.face_finder or finder_of(first, DEFAULT_FACE_FINDER)
        self.finders = {name: engine.load_part("face_finder", name, run)  # the source's finder first
                        for name in dict.fromkeys([self.finder_name, *member_finders(engine, config)])}
        self.finder = self.finders[self.finder_name]
        self.edit_methods = set(engine.registry.names("edit_method"))
        for method in config.methods:  # what an edit method needs from the editor, before any weight loads
            if config.editor != "none" and method in self.edit_methods:
                engine.check_editor(method, config.editor)
        self.editor = engine.load_part("editor", config.editor, run, **config.editor_options) \
            if config.editor != "none" else None
        for method in config.methods:
            if method in self.edit_methods and self.editor is None:
                raise ConfigError(f"edit method {method!r} edits the photo: give it an --editor ({DEFAULT_EDITOR})")
        self.purifiers = {spec: engine.load_purifier(spec, run) for spec in config.purify}
        self.protectors: dict[str, tuple[Any, Any, set[str]]] = {}  # method -> (method, budget, members' finders)
        self.edit_protectors: dict[str, Any] = {}
        self.targets: dict[str, Any] = {}

    def load(self, path: Path) -> Photo:
        """The photo's square around the source finder's faces (cached as the source) and every finder's faces
        there, each tagged with its finder (``source_faces`` picks the source finder's)."""
        image = load_rgb(path)
        found = find_all(image, self.finders)
        faces = found.pop(self.finder_name)
        if not faces:
            raise NoFaceError(f"{path}: no face found")
        square, square_faces = square_portrait(image, faces, self.config.size, [f for fs in found.values() for f in fs])
        return Photo(path, square, square_faces)

    def source_faces(self, faces: Sequence[Face]) -> list[Face]:
        """The source finder's faces: what the metrics and the edit methods read."""
        return [f for f in faces if f.finder == self.finder_name]

    def protect(self, method: str, square: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``method``'s protection of ``square``, under the budget ``guardkit run`` would use, as it is written;
        each face model reads its own finder's faces (``faces``: every finder's, tagged), as in ``guardkit run``."""
        config = self.config
        if method not in self.protectors:
            ensemble = self.engine.registry.get("method", method).capabilities.get("accepts_ensemble", False)
            run, options = self.engine.resolve_strength(method, self.run, config.strength, config.method_options,
                                                        eps=config.eps, steps=config.steps)
            built = self.engine.build_method(
                method, run, face_model=list(config.ensemble) if ensemble else config.ensemble[0],
                encoder=config.encoder, options=options, part_options=config.part_options)
            self.protectors[method] = (built.method, run.budget, {m.finder for m in built.members})
        protector, budget, readers = self.protectors[method]
        read = [f for f in faces if f.finder in readers] if readers else self.source_faces(faces)
        clean = image_to_tensor(square, self.device)
        return to_pixels(protector.protect(clean, read, budget), clean, budget)[0].permute(1, 2, 0).cpu().numpy()

    def edit_protector(self, method: str) -> Any:
        if method not in self.edit_protectors:
            models = [self.engine.build_part("face_model", n, self.run) for n in self.config.ensemble]
            parser = self.engine.build_part("face_parser", self.config.face_parser, self.run)
            self.edit_protectors[method] = self.engine.build_part(
                "edit_method", method, self.run, editor=self.editor, face_models=models, face_parser=parser,
                **self.config.method_options)
            self.edit_protectors[method].load()
        return self.edit_protectors[method]

    def target_of(self, method: str) -> Any:
        """The edit method's target identity (impersonation) from ``config.target_identity``, or None."""
        target = self.config.target_identity
        if target is None:
            return None
        if method not in self.targets:
            image = load_rgb(Path(target))
            found = self.finder.find(image)
            if not found:
                raise NoFaceError(f"{target}: no face found in the target identity photo")
            self.targets[method] = self.edit_protector(method).identity(image_to_tensor(image, self.device), found[:1])
        return self.targets[method]

    def guarded_key(self, method: str) -> str:  # an impersonating edit is cached apart from a dodging one
        target = self.config.target_identity
        return method if target is None else f"{method}-to-{Path(target).stem}"

    def guarded_edit(self, method: str, square: np.ndarray, faces: Sequence[Face], prompt: str, seed: int,
                     photo: str) -> np.ndarray:
        """An edit method's privacy-preserving edit, against the ensemble of ``config.ensemble``; its clean
        baseline (the same trajectory, controls and sampler without the adversarial stage: the report's
        ``clean``) is cached beside it, so PSNR/SSIM/LPIPS/CLIP-S measure the protection alone."""
        edited, report = self.edit_protector(method).protect(image_to_tensor(square, self.device), faces, prompt,
                                                             seed=seed, **_target_kwargs(self.target_of(method)))
        self.cache.get(["guarded-clean", self.guarded_key(method), photo, slug(prompt), str(seed)],
                       lambda: _clean_of(method, report, square))
        return _fit(edited, square)

    def guarded_clean(self, method: str, square: np.ndarray, faces: Sequence[Face], prompt: str, seed: int) -> np.ndarray:
        """The clean trajectory alone, when its cached copy is missing (a folder from an older run)."""
        _, report = self.edit_protector(method).protect(image_to_tensor(square, self.device), faces, prompt, seed=seed,
                                                        **_target_kwargs(self.target_of(method)))
        return _clean_of(method, report, square)

    def purified(self, image: np.ndarray, purifier: Any, photo: str, seed: int) -> np.ndarray:
        generator = purification_generator(self.run.seed, photo, seed, self.device)
        pixels = to_pixels(purifier.purify(image_to_tensor(image, self.device), generator), what="the purification")
        return pixels[0].permute(1, 2, 0).cpu().numpy()

    def edit(self, image: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        """The editor's output at the evaluation size."""
        return _fit(self.editor.edit(image_to_tensor(image, self.device), prompt, seed=seed), image)

    def samples(self, photo: str, square: np.ndarray, faces: Sequence[Face]):
        """(key, thunk) per sample of the photo ``photo`` (its ``photo_id``); the thunk computes (protected,
        edited, edited_clean) only when needed. ``faces``: every finder's, tagged."""
        cache, config, edit_faces = self.cache, self.config, self.source_faces(faces)

        def clean_edit(prompt: str, seed: int) -> np.ndarray:
            if self.editor is None:
                return square
            return cache.get(["edits", "clean", photo, slug(prompt), str(seed)],
                             lambda: self.edit(square, prompt, seed))

        for method in config.methods:
            for spec, purifier in self.purifiers.items():
                for prompt in config.prompts:
                    for seed in config.seeds:
                        key = (photo, method, spec, prompt, str(seed))
                        if method in self.edit_methods:  # the edit is the protection; purified after editing
                            def thunk(method=method, spec=spec, purifier=purifier, prompt=prompt, seed=seed):
                                guarded = self.guarded_key(method)
                                raw = cache.get(["guarded", guarded, photo, slug(prompt), str(seed)], lambda: (
                                    self.guarded_edit(method, square, edit_faces, prompt, seed, photo)))
                                baseline = cache.get(  # written by guarded_edit; computed again if missing
                                    ["guarded-clean", guarded, photo, slug(prompt), str(seed)],
                                    lambda: self.guarded_clean(method, square, edit_faces, prompt, seed))
                                seen = raw if purifier is None else cache.get(
                                    ["guarded-purified", guarded, spec, photo, slug(prompt), str(seed)],
                                    lambda: self.purified(raw, purifier, photo, seed))
                                return seen, seen, baseline
                        else:  # protect, purify, then edit
                            def thunk(method=method, spec=spec, purifier=purifier, prompt=prompt, seed=seed):
                                protected = square if method == "none" else cache.get(
                                    ["protected", method, photo], lambda: self.protect(method, square, faces))
                                seen = protected if purifier is None else cache.get(
                                    ["purified", method, spec, photo, str(seed)],
                                    lambda: self.purified(protected, purifier, photo, seed))
                                if self.editor is None:
                                    return seen, seen, square
                                edited = cache.get(["edits", method, spec, photo, slug(prompt), str(seed)],
                                                   lambda: self.edit(seen, prompt, seed))
                                return seen, edited, clean_edit(prompt, seed)
                        yield key, thunk


def evaluate(engine, inputs: Sequence[str | Path], config: EvalConfig, out_dir: str | Path, *,
             run: RunConfig | None = None, restart: bool = False, on_sample: Callable[[int, int], None] | None = None,
             on_warning: Callable[[str], None] | None = None) -> EvalResult:
    """Run the grid and write ``samples.csv``, ``summary.json`` and ``report.html`` to ``out_dir``.

    A folder holding results made under other settings is refused (``ConfigError``); ``restart`` removes what
    an earlier eval wrote there first. A bad input (missing, unreadable, no face, a sample that fails) is said
    once through ``on_warning``, listed in ``EvalResult.failed`` (and summary.json, report.html), none of its
    rows is summarised, and the other photos are evaluated."""
    import torch

    run = run or RunConfig()
    warn = on_warning or (lambda message: None)
    inputs_ = gather(inputs)
    out = Path(out_dir)
    settings = run_settings(engine, config, run)
    failed: list[str] = []
    failed_ids: set[str] = set()

    def said(result: PhotoResult) -> None:
        if result.status == "failed":
            warn(result.error)
            failed.append(result.error)
            failed_ids.add(photo_id(result.source))

    loop = PhotoLoop(inputs_, PhotoResult, on_photo=said)
    grid = _Grid(engine, config, run, out / "images")
    unavailable: dict[str, str] = {}
    metrics = build_metrics(engine, config, run, RememberingFinder(grid.finder, grid.finder_name), unavailable)
    claim_folder(out, settings, restart=restart)  # once the parts are checked: a typo claims no folder
    warn_unavailable(unavailable, warn)

    csv_path = out / "samples.csv"
    rows = _read_rows(csv_path)
    done = {_row_key(r) for r in rows}
    fieldnames = [*CSV_KEYS, *TEXT_KEYS, *metrics]
    if rows and list(rows[0]) != fieldnames:
        warn(f"{csv_path} was written with other metrics; starting it again")
        rows, done = [], set()
    write_header = not rows
    per_photo = len(config.methods) * len(config.purify) * len(config.prompts) * len(config.seeds)
    order = {path: i for i, path in enumerate(inputs_.paths)}
    total = len(inputs_.paths) * per_photo
    loop.start()
    with open(csv_path, "w" if write_header else "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        if write_header:
            writer.writeheader()
        for photo in loop.photos(grid.load):
            count = order[photo.path] * per_photo
            pid = photo_id(photo.path)
            scored: list[dict[str, Any]] = []  # written once every sample of the photo is scored
            try:
                square = grid.cache.get(["source", pid], lambda: photo.image)
                source = image_to_tensor(square, grid.device)
                for key, thunk in grid.samples(pid, square, photo.faces):
                    count += 1
                    if key in done:
                        continue
                    seen, edited, edited_clean = thunk()
                    batch = EvalBatch(source=source, protected=image_to_tensor(seen, grid.device),
                                      edited=image_to_tensor(edited, grid.device),
                                      edited_clean=image_to_tensor(edited_clean, grid.device), prompt=key[3],
                                      faces=grid.source_faces(photo.faces))
                    row: dict[str, Any] = dict(zip(CSV_KEYS, key))
                    row["group"] = prompt_group(key[3])
                    row["purify_seed"] = str(purification_seed(run.seed, key[0], int(key[4])))
                    with torch.no_grad():
                        for label, metric in metrics.items():
                            row[label] = float(metric.score(batch).float().mean())
                    scored.append(row)
                    if on_sample:
                        on_sample(count, total)
            except PHOTO_ERRORS as exc:  # this photo's remaining samples are given up; the others go on
                loop.fail(photo.path, exc)
                continue
            writer.writerows(scored)
            fh.flush()
            rows += scored
            done.update(_row_key(r) for r in scored)
    wanted = _grid_keys([photo_id(p) for p in inputs_.paths], config)
    rows = [r for r in rows if _row_key(r) in wanted and r["photo"] not in failed_ids]
    summary = summarise(rows, list(metrics))
    notes = {"attacked": attacked_models(engine, config), "fr_alignment": fr_alignment(metrics, config),
             "target_identity": str(config.target_identity) if config.target_identity else None, "failed": failed}
    write_summary(out, summary, unavailable, notes)
    write_report(out, summary, list(metrics), config, notes)
    return EvalResult(rows, summary, unavailable, out, failed)


__all__ = ["CSV_KEYS", "EvalConfig", "EvalResult", "attacked_models", "claim_folder", "evaluate", "held_out_note",
           "member_finders", "photo_id", "purification_generator", "purification_seed", "run_settings",
           "square_portrait", "summarise", "write_report"]
