"""The measuring kit behind ``bench_facelock.py`` (and the tests of the encoder loop's fast path).

- ``Case`` / ``measure_interleaved`` / ``Measurement`` / ``table``: warm every configuration up, then time
  them round-robin so that load from other processes falls on all of them alike; medians are reported,
  with peak memory (``guardkit.bench.PeakMemory``: CUDA allocated, or CPU resident set sampled);
- random-weight parts: the SD 1.5 VAE architecture (``random_sd_vae``), an IResNet-50 ArcFace at 112
  (``random_face_model``), LPIPS-alex (``random_lpips``): timing does not depend on weight values;
- ``synthetic_portraits``: smooth random images, each with one centred face filling the protected square;
- ``guardkit_facelock`` / ``facelock_objective``: guardkit's ``facelock`` on given parts, and FaceLock's
  objective (all three terms, fp32) to score any protection with;
- ``facelock_bench``: (a) FaceLock's released loop (``reference_facelock.py``) vs (b) guardkit's ``facelock``
  (plain fp32, and the fast path at several batch sizes), in one process, on one device.

Scripts in this folder import it by name (``import speed_suite``): it is not part of the installed package.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from guardkit.bench import PeakMemory
from guardkit.fast_path import AUTOCAST_MODES, set_layout
from guardkit.torch_settings import torch_settings


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    """One configuration's timings: ``seconds`` per repeat (each repeat protects ``batch`` images)."""

    name: str
    batch: int
    seconds: list[float]
    peak_mb: float
    rise_mb: float
    device: str
    settings: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None  # images/s over the reference's

    @property
    def seconds_per_image(self) -> float:
        return statistics.median(self.seconds) / self.batch

    @property
    def images_per_second(self) -> float:
        return 1.0 / self.seconds_per_image

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(seconds_per_image=self.seconds_per_image, images_per_second=self.images_per_second)
        return out


@dataclass
class Case:
    """One configuration to time: ``run()`` protects ``batch`` images; ``warmup()`` runs first, untimed."""

    name: str
    run: Callable[[], Any]
    batch: int
    warmup: Callable[[], Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    before: Callable[[], Any] | None = None  # put shared state as the case needs it (module layout)


def measure_interleaved(cases: Sequence[Case], *, device: torch.device | str, repeats: int = 1) -> list[Measurement]:
    """Warm every case up, then time them round-robin ``repeats`` times (so load from other processes
    falls on all of them alike); peak memory: the largest over a case's timed runs."""
    for case in cases:
        if case.before is not None:
            case.before()
        if case.warmup is not None:
            case.warmup()
    synchronize(device)
    seconds: list[list[float]] = [[] for _ in cases]
    peaks = [0] * len(cases)
    rises = [0] * len(cases)
    for _ in range(repeats):
        for i, case in enumerate(cases):
            if case.before is not None:
                case.before()
            with PeakMemory(device) as memory:
                started = time.perf_counter()
                case.run()
                synchronize(device)
                seconds[i].append(time.perf_counter() - started)
            peaks[i], rises[i] = max(peaks[i], memory.peak), max(rises[i], memory.rise)
    return [Measurement(c.name, c.batch, s, p / 2**20, r / 2**20, str(device), dict(c.settings))
            for c, s, p, r in zip(cases, seconds, peaks, rises)]


def table(rows: Sequence[Measurement], title: str = "") -> str:
    """Plain-text table of measurements (median seconds per image, images/s, peak memory, ratio)."""
    head = f"{'configuration':34} {'batch':>5} {'s/image':>9} {'images/s':>9} {'peak MB':>9} {'rise MB':>8} " \
           f"{'vs ref':>7}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.ratio:6.2f}x" if r.ratio is not None else "      -"
        lines.append(f"{r.name:34} {r.batch:5d} {r.seconds_per_image:9.3f} {r.images_per_second:9.3f} "
                     f"{r.peak_mb:9.0f} {r.rise_mb:8.0f} {ratio}")
    return "\n".join(lines)


# ============================================================================= parts
def _parts(registry: Any = None) -> Any:
    """The registry the benchmark parts come from (core never imports plugins: built-ins come through
    their entry points like any third-party part)."""
    if registry is not None:
        return registry
    from guardkit.engine import Engine

    return Engine().registry


def random_sd_vae(device: torch.device | str = "cpu", *, config: dict | None = None, seed: int = 0,
                  gradient_checkpointing: bool = False, registry: Any = None):
    """An ``sd-vae`` encoder part holding the SD 1.5 VAE architecture (or ``config``) with seeded random weights."""
    from guardkit.config import RunConfig

    factory = _parts(registry).get("encoder", "sd-vae").factory
    return factory.random(RunConfig(device=str(torch.device(device))), seed=seed, config=config,
                          gradient_checkpointing=gradient_checkpointing)


def random_face_model(kind: str = "arcface", device: torch.device | str = "cpu", seed: int = 0,
                      registry: Any = None):
    """A face model part with random weights: ``arcface`` (IResNet-50 at 112, the ONNX layout) or ``tiny``."""
    from guardkit.config import RunConfig
    from guardkit.errors import ConfigError

    run = RunConfig(device=str(torch.device(device)))
    if kind == "tiny":
        from guardkit.testing import TinyFaceModel

        model = TinyFaceModel(run)
        model.load()
        return model
    if kind != "arcface":
        raise ConfigError(f"face model for the benchmark: 'arcface' or 'tiny', got {kind!r}")
    return _parts(registry).get("face_model", "arcface").factory.random(run, seed=seed)


def random_lpips(device: torch.device | str = "cpu", net: str = "alex", registry: Any = None):
    """The LPIPS module with seeded random backbone and heads (timing and tests only)."""
    loss = _parts(registry).get("loss", "lpips").factory(net=net, random_backbone=True, random_heads=True)
    return loss.lpips(torch.empty(0, device=torch.device(device)))


def facelock_losses(lpips_module: torch.nn.Module | None = None, registry: Any = None) -> list:
    """FaceLock's three terms as guardkit builds them; ``lpips_module`` is shared when given."""
    from guardkit.types import WeightedLoss

    parts = _parts(registry)
    lpips = parts.get("loss", "lpips").factory(random_backbone=True, random_heads=True)
    if lpips_module is not None:
        lpips.module = lpips_module
    return [WeightedLoss(1.0, parts.get("loss", "face-cosine").factory(), "face-cosine"),
            WeightedLoss(1.0, lpips, "lpips"), WeightedLoss(0.2, parts.get("loss", "latent-l2").factory(), "latent-l2")]


def synthetic_portraits(batch: int, size: int, device: torch.device | str = "cpu", seed: int = 0):
    """``batch`` smooth random [0, 1] images ``size`` x ``size`` (8-bit grid), each with one centred face
    (arcface5 landmarks) whose protected square (2.2 x the face) covers the whole image."""
    from guardkit.types import Face

    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=gen)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = (torch.round(images * 255) / 255).to(device)
    c, s = size / 2, size / 2
    pts = ((c - 0.35 * s, c - 0.2 * s), (c + 0.35 * s, c - 0.2 * s), (c, c + 0.1 * s),
           (c - 0.25 * s, c + 0.35 * s), (c + 0.25 * s, c + 0.35 * s))
    faces = [Face(i, (c - s / 2, c - s / 2, c + s / 2, c + s / 2), pts, "arcface5") for i in range(batch)]
    return images, faces


# ============================================================================= (b) guardkit's facelock
def guardkit_facelock(encoder: Any, face_model: Any, lpips_module: torch.nn.Module, *, resolution: int,
                      steps: int, eps: float = 4 / 255, seed: int = 0, **options: Any):
    """guardkit's ``facelock`` method on the given parts; ``options``: ``LatentAttackConfig`` fields
    (``autocast``, ``channels_last``, ``compile``, ...). Returns ``(method, budget)``."""
    from guardkit.config import Budget, RunConfig

    registry = _parts(None)
    device = next(encoder.vae.parameters()).device
    run = RunConfig(device=str(device), seed=seed)
    method = registry.get("method", "facelock").factory(
        run, encoder=encoder, face_model=face_model, losses=facelock_losses(lpips_module, registry),
        resolution=resolution, **options)
    return method, Budget(eps=eps, steps=steps)


def facelock_objective(encoder: Any, face_model: Any, lpips_module: torch.nn.Module, clean: torch.Tensor,
                       adv: torch.Tensor, faces: Sequence) -> torch.Tensor:
    """FaceLock's objective of ``adv`` (all three terms, fp32, no schedule), per image, higher = more
    protection: (1 - cos) of the decoded face + LPIPS(decoded, clean) + 0.2 * latent MSE. Images are
    taken as the model sees them (``clean`` and ``adv`` at the encoder's resolution)."""
    import torch.nn.functional as F

    with torch.no_grad():
        z_clean, z_adv = encoder.encode(clean * 2 - 1), encoder.encode(adv * 2 - 1)
        decoded = ((encoder.decode(z_adv) + 1) / 2).clamp(0, 1)
        e_adv = face_model.embed(face_model.align(decoded, faces))
        e_clean = face_model.embed(face_model.align(clean, faces))
        index = torch.tensor([f.image_index for f in faces], device=clean.device)
        rows = 1 - F.cosine_similarity(e_adv, e_clean, dim=1)
        fr = torch.zeros(clean.shape[0], device=clean.device).index_add(0, index, rows.float())
        count = torch.zeros(clean.shape[0], device=clean.device).index_add(0, index, torch.ones_like(rows.float()))
        lp = lpips_module.float()(decoded, clean)
        scale = float(getattr(encoder, "scaling_factor", 1.0) or 1.0)  # the VAE's own units, as released
        latent = ((z_adv - z_clean) / scale).pow(2).flatten(1).mean(1)
        return fr / count.clamp_min(1) + lp + 0.2 * latent


def facelock_bench(*, device: str = "cpu", resolution: int = 512, steps: int = 100,
                   batches: Iterable[int] = (1, 4, 8), face_model: str = "arcface", repeats: int = 1,
                   autocast_mode: str | Sequence[str] | None = None, channels_last: bool = True, compile: bool = False,
                   gradient_checkpointing: bool = False, plain: bool = True, reference: bool = True,
                   log: Callable[[str], None] | None = None) -> list[Measurement]:
    """(a) the released loop vs (b) guardkit's ``facelock``, in this process, on ``device``.

    Rows: ``reference`` (batch 1, the released loop), ``guardkit fp32`` (batch 1, defaults) when
    ``plain``, then the fast path at each batch size for each autocast mode (``autocast_mode``: one,
    a list or "none,bf16"; default bf16 on CUDA, none on CPU), in channels-last, optionally compiled.
    ``ratio`` is images/s over the reference's.
    """
    from guardkit.errors import ConfigError
    from reference_facelock import reference_facelock

    log = log or (lambda text: None)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available here")
    if resolution % 8:
        raise ConfigError(f"resolution must be a multiple of 8, got {resolution}")
    modes = [autocast_mode] if isinstance(autocast_mode, str) else list(autocast_mode or [])
    modes = [m.strip() for mode in modes for m in mode.split(",") if m.strip()] or \
        ["bf16" if dev.type == "cuda" else "none"]
    for mode in modes:
        if mode not in AUTOCAST_MODES:
            raise ConfigError(f"autocast: one of {', '.join(AUTOCAST_MODES)}, got {mode!r}")
    encoder = random_sd_vae(dev, gradient_checkpointing=gradient_checkpointing)
    model = random_face_model(face_model, dev)
    lpips_module = random_lpips(dev)
    batches = sorted({int(b) for b in batches})
    images, faces = synthetic_portraits(max(batches + [1]), resolution, dev)
    one, one_faces = images[:1], faces[:1]
    modules = [encoder.vae, model.net, lpips_module]
    cases: list[Case] = []
    warm_steps = min(steps, 3)  # 3 steps reach every term of the schedule

    if reference:
        def ref(iters: int) -> Callable[[], Any]:
            return lambda: reference_facelock(one, one_faces, vae=encoder.vae, face_model=model, lpips=lpips_module,
                                              iters=iters)

        cases.append(Case("reference (released loop)", ref(steps), 1, ref(warm_steps),
                          {"autocast": "fp16" if dev.type == "cuda" else "none", "steps": steps},
                          before=lambda: set_layout(modules, False)))

    def guardkit_case(name: str, batch: int, **options: Any) -> Case:
        x, fs = images[:batch], [f for f in faces if f.image_index < batch]
        method, budget = guardkit_facelock(encoder, model, lpips_module, resolution=resolution, steps=steps,
                                           **options)
        warm_budget = budget if options.get("compile") else type(budget)(eps=budget.eps, steps=warm_steps)

        def warmup() -> None:
            log(f"warm-up: {name}, batch {batch}")
            method.protect(x, fs, warm_budget)

        layout = bool(options.get("channels_last"))
        return Case(name, lambda: method.protect(x, fs, budget), batch, warmup, {**options, "steps": steps},
                    before=lambda: set_layout(modules, layout))

    plain_settings = {"autocast": "none", "channels_last": False, "compile": False}
    if plain:
        cases.append(guardkit_case("guardkit fp32", 1))
    for mode in modes:
        fast = {"autocast": mode, "channels_last": channels_last, "compile": compile}
        label = "guardkit " + "+".join([mode if mode != "none" else "fp32"] + (["channels-last"] if channels_last
                                       else []) + (["compile"] if compile else []))
        for batch in batches:
            if not (plain and batch == 1 and fast == plain_settings):  # that row is already there
                cases.append(guardkit_case(label, batch, **fast))
    log(f"timing {len(cases)} configurations x {repeats} (interleaved) ...")
    with torch_settings(cudnn_benchmark=True if dev.type == "cuda" else None):  # cuDNN's autotuner, for this only
        rows = measure_interleaved(cases, device=dev, repeats=repeats)
    base = rows[0].images_per_second if reference and rows else None
    for row in rows:
        row.ratio = row.images_per_second / base if base else None
    return rows
