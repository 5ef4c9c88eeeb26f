"""``guardkit eval``: protect, purify, edit and score, over photos x methods x purifications x prompts x seeds.

Every photo is first cut to a square around its faces and resized to ``size`` (the paper's
512x512 portraits), so protections, editors and metrics all see the same pixels. Photos go through the
shared photo loop (``guardkit.photo_loop``): a photo that cannot be read, has no face or fails on the way
is named in one line and the others go on; each protection is projected onto its budget, checked finite
and rounded to 8 bits, as ``guardkit run`` writes it, under the same defaults (``Engine.resolve_strength``).
Intermediate images are cached under the output folder (written atomically; a cached image of another size
is made again) and every scored sample is appended to ``samples.csv`` as soon as it is done, so an
interrupted run resumes where it stopped. ``summary.json`` holds mean +- std per (method, purification,
metric); ``report.html`` an image grid and bar charts (``guardkit.eval_report``).

The editor ``none`` skips editing: the metrics then compare the protected photo itself with the
source (``edited`` = protected, ``edited_clean`` = source), which answers "does FR still match it?".
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from guardkit.arrays import image_to_tensor, tensor_to_image
from guardkit.config import RunConfig
from guardkit.engine import DEFAULT_EDITOR, DEFAULT_FACE_FINDER, DEFAULT_FACE_MODEL, DEFAULT_FACE_PARSER, DEFAULT_METHOD
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
    chosen in the run is kept). ``face_finder`` None: the first ensemble model's own finder."""

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


def square_portrait(image: np.ndarray, faces: Sequence[Face], size: int) -> tuple[np.ndarray, list[Face]]:
    """The face-centred square of ``image`` resized to ``size`` x ``size``, and its faces moved with it."""
    from guardkit.region import ModelSpace

    space = ModelSpace.around(image.shape[0], image.shape[1], faces, size)
    square = space.to_model(space.crop(image_to_tensor(image, "cpu")))
    return tensor_to_image(square), space.faces(faces)


class _Cache:
    """PNG files under the output folder: load when done (whole, and ``size`` x ``size``), else compute and
    save atomically."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size = root, size

    def get(self, parts: Sequence[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.root.joinpath(*[slug(p) for p in parts]).with_suffix(".png")
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


class _Grid:
    """The parts every sample shares and the images of one photo's samples, each made once (cached)."""

    def __init__(self, engine, config: EvalConfig, run: RunConfig, images: Path) -> None:
        self.engine, self.config, self.run, self.device = engine, config, run, run.torch_device()
        self.cache = _Cache(images, config.size)
        first = engine.registry.get("face_model", config.ensemble[0]).factory if config.ensemble else None
        self.finder_name = config.face_finder or finder_of(first, DEFAULT_FACE_FINDER)
        self.finder = engine.load_part("face_finder", self.finder_name, run)
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
        self.protectors: dict[str, tuple[Any, Any]] = {}  # method -> (method, budget)
        self.edit_protectors: dict[str, Any] = {}
        self.targets: dict[str, Any] = {}

    def load(self, path: Path) -> Photo:
        """The photo's face-centred square (cached as the source) and its faces there."""
        image = load_rgb(path)
        faces = self.finder.find(image)
        if not faces:
            raise NoFaceError(f"{path}: no face found")
        square, square_faces = square_portrait(image, faces, self.config.size)
        return Photo(path, square, square_faces)

    def protect(self, method: str, square: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``method``'s protection of ``square``, under the budget ``guardkit run`` would use, as it is written."""
        config = self.config
        if method not in self.protectors:
            ensemble = self.engine.registry.get("method", method).capabilities.get("accepts_ensemble", False)
            run, options = self.engine.resolve_strength(method, self.run, config.strength, config.method_options,
                                                        eps=config.eps, steps=config.steps)
            built = self.engine.build_method(
                method, run, face_model=list(config.ensemble) if ensemble else config.ensemble[0],
                encoder=config.encoder, options=options, part_options=config.part_options)
            self.protectors[method] = (built.method, run.budget)
        protector, budget = self.protectors[method]
        clean = image_to_tensor(square, self.device)
        return to_pixels(protector.protect(clean, faces, budget), clean, budget)[0].permute(1, 2, 0).cpu().numpy()

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
                     stem: str) -> np.ndarray:
        """An edit method's privacy-preserving edit, against the ensemble of ``config.ensemble``; its clean
        baseline (the same trajectory, controls and sampler without the adversarial stage: the report's
        ``clean``) is cached beside it, so PSNR/SSIM/LPIPS/CLIP-S measure the protection alone."""
        edited, report = self.edit_protector(method).protect(image_to_tensor(square, self.device), faces, prompt,
                                                             seed=seed, **_target_kwargs(self.target_of(method)))
        self.cache.get(["guarded-clean", self.guarded_key(method), stem, slug(prompt), str(seed)],
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

    def samples(self, path: Path, square: np.ndarray, faces: Sequence[Face]):
        """(key, thunk) per sample; the thunk computes (protected, edited, edited_clean) only when needed."""
        stem, cache, config = path.stem, self.cache, self.config

        def clean_edit(prompt: str, seed: int) -> np.ndarray:
            if self.editor is None:
                return square
            return cache.get(["edits", "clean", stem, slug(prompt), str(seed)], lambda: self.edit(square, prompt, seed))

        for method in config.methods:
            for spec, purifier in self.purifiers.items():
                for prompt in config.prompts:
                    for seed in config.seeds:
                        key = (path.name, method, spec, prompt, str(seed))
                        if method in self.edit_methods:  # the edit is the protection; purified after editing
                            def thunk(method=method, spec=spec, purifier=purifier, prompt=prompt, seed=seed):
                                guarded = self.guarded_key(method)
                                raw = cache.get(["guarded", guarded, stem, slug(prompt), str(seed)],
                                                lambda: self.guarded_edit(method, square, faces, prompt, seed, stem))
                                baseline = cache.get(  # written by guarded_edit; computed again if missing
                                    ["guarded-clean", guarded, stem, slug(prompt), str(seed)],
                                    lambda: self.guarded_clean(method, square, faces, prompt, seed))
                                seen = raw if purifier is None else cache.get(
                                    ["guarded-purified", guarded, spec, stem, slug(prompt), str(seed)],
                                    lambda: self.purified(raw, purifier, path.name, seed))
                                return seen, seen, baseline
                        else:  # protect, purify, then edit
                            def thunk(method=method, spec=spec, purifier=purifier, prompt=prompt, seed=seed):
                                protected = square if method == "none" else cache.get(
                                    ["protected", method, stem], lambda: self.protect(method, square, faces))
                                seen = protected if purifier is None else cache.get(
                                    ["purified", method, spec, stem, str(seed)],
                                    lambda: self.purified(protected, purifier, path.name, seed))
                                if self.editor is None:
                                    return seen, seen, square
                                edited = cache.get(["edits", method, spec, stem, slug(prompt), str(seed)],
                                                   lambda: self.edit(seen, prompt, seed))
                                return seen, edited, clean_edit(prompt, seed)
                        yield key, thunk


def evaluate(engine, inputs: Sequence[str | Path], config: EvalConfig, out_dir: str | Path, *,
             run: RunConfig | None = None, on_sample: Callable[[int, int], None] | None = None,
             on_warning: Callable[[str], None] | None = None) -> EvalResult:
    """Run the grid and write ``samples.csv``, ``summary.json`` and ``report.html`` to ``out_dir``.

    A bad input (missing, unreadable, no face, a sample that fails) is said once through ``on_warning``,
    listed in ``EvalResult.failed``, and the other photos are evaluated."""
    import torch

    run = run or RunConfig()
    warn = on_warning or (lambda message: None)
    inputs_ = gather(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []

    def said(result: PhotoResult) -> None:
        if result.status == "failed":
            warn(result.error)
            failed.append(result.error)

    loop = PhotoLoop(inputs_, PhotoResult, on_photo=said)
    grid = _Grid(engine, config, run, out / "images")
    unavailable: dict[str, str] = {}
    metrics = build_metrics(engine, config, run, RememberingFinder(grid.finder, grid.finder_name), unavailable)
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
            try:
                square = grid.cache.get(["source", photo.path.stem], lambda: photo.image)
                source = image_to_tensor(square, grid.device)
                for key, thunk in grid.samples(photo.path, square, photo.faces):
                    count += 1
                    if key in done:
                        continue
                    seen, edited, edited_clean = thunk()
                    batch = EvalBatch(source=source, protected=image_to_tensor(seen, grid.device),
                                      edited=image_to_tensor(edited, grid.device),
                                      edited_clean=image_to_tensor(edited_clean, grid.device), prompt=key[3],
                                      faces=photo.faces)
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
            except PHOTO_ERRORS as exc:  # this photo's remaining samples are given up; the others go on
                loop.fail(photo.path, exc)
    summary = summarise(rows, list(metrics))
    notes = {"attacked": attacked_models(engine, config), "fr_alignment": fr_alignment(metrics, config),
             "target_identity": str(config.target_identity) if config.target_identity else None}
    write_summary(out, summary, unavailable, notes)
    write_report(out, summary, list(metrics), config, notes)
    return EvalResult(rows, summary, unavailable, out, failed)


__all__ = ["CSV_KEYS", "EvalConfig", "EvalResult", "attacked_models", "evaluate", "held_out_note",
           "purification_generator", "purification_seed", "square_portrait", "summarise", "write_report"]
