"""Speed: the engine's fast-path helpers, and the measurements behind ``guardkit bench``.

Fast-path helpers (used by ``guardkit.latent_attack`` through ``LatentAttackConfig``):

- ``autocast(device, mode)``: the per-step forward under ``torch.autocast`` ("none" | "bf16" | "fp16");
- ``ChannelsLast``: puts the convolution modules of the parts (encoder VAE, face network, LPIPS) in NHWC;
- ``StepCompiler``: ``torch.compile`` of the per-step objective, one graph per set of active terms,
  falling back to eager (with a warning) where compiling fails. ``$GUARDKIT_COMPILE_BACKEND`` picks the
  backend (default ``inductor``; tests use ``aot_eager``).

Measurements (``benchmarks/`` and ``guardkit bench``):

- ``reference_facelock``: a port of FaceLock's released loop (github taco-group/FaceLock, ``methods.py``
  ``facelock``), written plainly as the released code is: batch 1, one VAE encode + decode of the whole
  512x512 image per step, FR cosine + LPIPS + 0.2 * latent MSE, every term computed every step (switched
  by 0/1 factors), fp16 on CUDA, linearly decayed signed step, clip to eps and [-1, 1]. It takes the same
  module objects as guardkit, so only the loop differs;
- ``facelock_bench``: (a) that loop vs (b) guardkit's ``facelock`` (plain fp32, and the fast path at
  several batch sizes) on the real SD 1.5 VAE architecture with random weights (timing does not depend on
  weight values), random-weight LPIPS-alex and a random IResNet-50 ArcFace;
- ``fr_cloak_bench``: the default ``fr-cloak`` (dlib) on a portrait and on copies padded to other sizes, so
  that the cost is seen to follow the face region, not the photo;
- ``PeakMemory``: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident set size sampled
  every few milliseconds (and its rise over the start of the measurement).

Speed is measured here and in ``benchmarks/``, never asserted in tests.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from typing_extensions import Self

AUTOCAST_MODES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ============================================================================= fast-path helpers
def autocast(device: torch.device | str, mode: str):
    """``torch.autocast`` for ``mode`` ("bf16", "fp16") on ``device``'s type; a no-op for "none"."""
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {mode!r}")
    dtype = AUTOCAST_MODES[mode]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def modules_of(*parts: Any) -> list[torch.nn.Module]:
    """The torch modules behind guardkit parts: the part itself if it is one, else its ``vae``
    (encoders), ``net`` (face models) or ``module`` (LPIPS losses) attribute, when set."""
    found: list[torch.nn.Module] = []
    for part in parts:
        if isinstance(part, torch.nn.Module):
            found.append(part)
            continue
        for name in ("vae", "net", "module"):
            module = getattr(part, name, None)
            if isinstance(module, torch.nn.Module):
                found.append(module)
    return found


def set_layout(modules: Iterable[torch.nn.Module], channels_last: bool) -> None:
    """Every 4-D parameter of ``modules`` in ``channels_last`` or the default (contiguous) layout, in place;
    a module already in that layout is left alone (cheap: one parameter is looked at)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in modules:
        first = next((p for p in module.parameters() if p.ndim == 4), None)
        if first is not None and not first.is_contiguous(memory_format=fmt):
            module.to(memory_format=fmt)


class ChannelsLast:
    """Puts the parts' modules in ``torch.channels_last`` (in place); ``convert()`` may be called every
    step, as a loss can build its module on first use (and it costs a look at one parameter a module)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def convert(self) -> None:
        set_layout(modules_of(*self.parts), True)


def compile_backend() -> str:
    return os.environ.get("GUARDKIT_COMPILE_BACKEND", "inductor")


class StepCompiler:
    """``forward(x, names) -> Tensor[B]`` compiled once per ``names`` (the active terms).

    The first call of each graph also runs its backward (so a failure to compile either is caught
    here); on any failure the step warns once and runs eagerly from then on.
    """

    def __init__(self, forward: Callable[[torch.Tensor, frozenset], torch.Tensor], backend: str | None = None) -> None:
        self.forward = forward
        self.backend = backend or compile_backend()
        self.graphs: dict[frozenset, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.failed: str | None = None

    def _graph(self, names: frozenset) -> Callable[[torch.Tensor], torch.Tensor]:
        forward = self.forward

        def step(x: torch.Tensor) -> torch.Tensor:
            return forward(x, names)

        return torch.compile(step, backend=self.backend, dynamic=False)

    def __call__(self, x: torch.Tensor, names: frozenset) -> torch.Tensor:
        if self.failed is not None:
            return self.forward(x, names)
        first = names not in self.graphs
        try:
            if first:
                self.graphs[names] = self._graph(names)
            value = self.graphs[names](x)
            if first and x.requires_grad:  # compile the backward now, where its failure can be caught
                torch.autograd.grad(value.sum(), x, retain_graph=True)
            return value
        except Exception as exc:  # noqa: BLE001 - dynamo/inductor raise many types: any means "run eagerly"
            self.failed = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            warnings.warn(f"torch.compile of the per-step objective failed ({self.failed}); running eagerly",
                          RuntimeWarning, stacklevel=2)
            return self.forward(x, names)


# ============================================================================= memory and time
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best there is
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory of a block: ``peak`` (bytes) and ``rise`` (peak minus the start).

    CUDA: ``torch.cuda.max_memory_allocated`` (reset at entry). CPU: the process's resident set size
    sampled every ``interval`` seconds by a thread (torch's CPU allocations are invisible to tracemalloc).
    """

    def __init__(self, device: torch.device | str, interval: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def rise(self) -> int:
        return max(self.peak - self.start, 0)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


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


# ============================================================================= benchmark parts
#: Stable Diffusion 1.x's VAE (diffusers ``AutoencoderKL``, as in runwayml SD 1.5 and InstructPix2Pix).
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


# ============================================================================= (a) FaceLock's released loop
def reference_facelock(x: torch.Tensor, faces: Sequence, *, vae: torch.nn.Module, face_model: Any,
                       lpips: torch.nn.Module, eps: float = 0.03, step_size: float = 0.01, iters: int = 100,
                       seed: int = 0) -> torch.Tensor:
    """FaceLock's released loop, ported: ``x`` [1,3,H,W] in [0, 1] (the released code feeds the 512x512
    photo), ``faces`` its face(s) (the released code runs a learned aligner on both images every step;
    here ``face_model.align`` at the given landmarks stands for it). ``vae``: the diffusers
    ``AutoencoderKL``; ``lpips``: an LPIPS module on [0, 1] images; ``eps`` and ``step_size`` in the
    released code's [-1, 1] units. On CUDA, as released: the VAE in fp16 (the pipeline is loaded with
    ``torch_dtype=float16``) under ``torch.autocast("cuda")`` (fp16). On CPU: fp32, no autocast.
    Returns the protected image in [0, 1]."""
    if x.shape[0] != 1:
        raise ValueError("the released FaceLock loop protects one image at a time (batch 1)")
    cuda = x.device.type == "cuda"
    if cuda:
        vae = copy.deepcopy(vae).half()
    context = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    with context:
        return _reference_loop(x, faces, vae, face_model, lpips, eps, step_size, iters, seed, cuda)


def reference_facelock_loss(X_adv: torch.Tensor, X: torch.Tensor, clean_latent: torch.Tensor, i: int, iters: int, *,
                            vae: torch.nn.Module, face_model: Any, lpips: torch.nn.Module,
                            faces: Sequence) -> torch.Tensor:
    """The loss the released loop ascends at iteration ``i`` of ``iters`` (images in [-1, 1]; ``clean_latent``
    the VAE's ``latent_dist.mean`` of ``X``): ``-cos * [i >= 0.35 iters] + 0.2 * F.mse_loss(latent, clean)
    + LPIPS * [i > 0.25 iters]``, per image."""
    import torch.nn.functional as F

    def compute_score(image1, image2):  # FR cosine similarity, as the released utils.compute_score
        feat1 = face_model.embed(face_model.align((image1 + 1) / 2, faces))
        feat2 = face_model.embed(face_model.align((image2 + 1) / 2, faces))
        return F.cosine_similarity(feat1, feat2)

    def lpips_fn(image1, image2):  # the lpips package takes [-1, 1]
        return lpips((image1 + 1) / 2, (image2 + 1) / 2)

    latent = vae.encode(X_adv.to(next(vae.parameters()).dtype)).latent_dist.mean
    image = vae.decode(latent).sample.clip(-1, 1)
    loss_cvl = compute_score(image.float(), X.float())
    loss_encoder = F.mse_loss(latent, clean_latent)
    loss_lpips = lpips_fn(image, X)
    return (-loss_cvl * (1 if i >= iters * 0.35 else 0.0) + loss_encoder * 0.2
            + loss_lpips * (1 if i > iters * 0.25 else 0.0))


def _reference_loop(x, faces, vae, face_model, lpips, eps, step_size, iters, seed, cuda):
    X = (x * 2 - 1).half() if cuda else x * 2 - 1
    generator = torch.Generator().manual_seed(seed)
    noise = (torch.rand(*X.shape, generator=generator) * 2 * eps - eps).to(X.device)
    X_adv = torch.clamp(X.clone().detach() + noise, min=-1, max=1)
    if cuda:
        X_adv = X_adv.half()
    X_adv.requires_grad_(True)
    clean_latent = vae.encode(X.to(next(vae.parameters()).dtype)).latent_dist.mean

    for i in range(iters):
        actual_step_size = step_size - (step_size - step_size / 100) / iters * i

        loss = reference_facelock_loss(X_adv, X, clean_latent, i, iters, vae=vae, face_model=face_model,
                                       lpips=lpips, faces=faces)
        grad, = torch.autograd.grad(loss.sum(), [X_adv])
        X_adv = X_adv + grad.detach().sign() * actual_step_size

        X_adv = torch.minimum(torch.maximum(X_adv, X - eps), X + eps)
        X_adv.data = torch.clamp(X_adv, min=-1, max=1)
        X_adv.grad = None
        X_adv = X_adv.detach().requires_grad_(True)  # (the released code keeps the graph's leaf implicitly)

    return ((X_adv.detach().float() + 1) / 2).clamp(0, 1)


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
    a list or "none,bf16"; default bf16 on CUDA, none on CPU), in channels-last, optionally compiled. ``ratio`` is images/s over the reference's.
    """
    log = log or (lambda text: None)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from guardkit.errors import ConfigError

        raise ConfigError("--device cuda requested but CUDA is not available here")
    if resolution % 8:
        from guardkit.errors import ConfigError

        raise ConfigError(f"resolution must be a multiple of 8, got {resolution}")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    modes = [autocast_mode] if isinstance(autocast_mode, str) else list(autocast_mode or [])
    modes = [m.strip() for mode in modes for m in mode.split(",") if m.strip()] or \
        ["bf16" if dev.type == "cuda" else "none"]
    for mode in modes:
        if mode not in AUTOCAST_MODES:
            from guardkit.errors import ConfigError

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
    rows = measure_interleaved(cases, device=dev, repeats=repeats)
    base = rows[0].images_per_second if reference and rows else None
    for row in rows:
        row.ratio = row.images_per_second / base if base else None
    return rows


# ============================================================================= fr-cloak on growing photos
DEFAULT_PORTRAIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces" / "obama.jpg"


def padded_photo(image, megapixels: float, centre: tuple[float, float] | None = None):
    """``image`` (H,W,3 uint8) cropped or padded (a border of its mean colour) around its centre to about
    ``megapixels`` with the same aspect ratio, the face keeping its size in pixels. A crop is centred
    on ``centre`` (x, y: the face; default the photo's centre), kept inside the photo."""
    import numpy as np

    h, w = image.shape[:2]
    k = (megapixels * 1e6 / (h * w)) ** 0.5
    th, tw = max(round(h * k), 16), max(round(w * k), 16)
    if k < 1:  # crop around the face
        cx, cy = centre if centre is not None else (w / 2, h / 2)
        x0 = int(min(max(cx - tw / 2, 0), w - tw))
        y0 = int(min(max(cy - th / 2, 0), h - th))
        return np.ascontiguousarray(image[y0:y0 + th, x0:x0 + tw])
    py, px = th - h, tw - w
    out = np.empty((th, tw, 3), dtype=image.dtype)
    out[:] = image.reshape(-1, 3).mean(axis=0).round().astype(image.dtype)  # a flat border: no new face
    out[py // 2:py // 2 + h, px // 2:px // 2 + w] = image
    return out


def fr_cloak_bench(*, photo: str | Path | None = None, megapixels: Sequence[float] = (0.25, 1, 4, 12),
                   steps: int | None = None, repeats: int = 1, threads: int | None = None,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The default ``fr-cloak`` (``Engine().protect`` defaults: dlib finder and model) on ``photo`` resized
    by cropping/padding to each size in ``megapixels`` (0 or a negative size: the photo as it is).

    Each row: megapixels, faces, median seconds (find + protect + save, models loaded beforehand),
    median protect seconds (the engine's own per-photo time), and peak / rise of RSS (MB)."""
    import numpy as np
    from guardkit.config import Budget, RunConfig
    from guardkit.engine import Engine
    from guardkit.imageio import load_rgb, save_image

    log = log or (lambda text: None)
    photo = Path(photo) if photo is not None else DEFAULT_PORTRAIT
    if threads:
        torch.set_num_threads(threads)
    image = load_rgb(photo)
    run = RunConfig(threads=threads) if steps is None else RunConfig(budget=Budget(steps=steps), threads=threads)
    engine = Engine()
    built = engine.build_method("fr-cloak", run)  # load the models once, outside the timings
    found = built.find_faces(image, photo)
    if not found:
        raise RuntimeError(f"fr-cloak bench: no face found in {photo}")
    box = found[0].box
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="guardkit-bench-") as tmp:
        for mp in megapixels:
            sized = image if mp <= 0 else padded_photo(image, mp, centre)
            path = Path(tmp) / f"photo_{sized.shape[1]}x{sized.shape[0]}.png"
            save_image(np.ascontiguousarray(sized), path)
            totals, protects, faces = [], [], 0
            with PeakMemory("cpu") as memory:
                for _ in range(repeats):
                    started = time.perf_counter()
                    result = engine.protect([path], run=run)
                    totals.append(time.perf_counter() - started)
                    photo_result = result.photos[0]
                    if photo_result.status != "protected":
                        raise RuntimeError(f"fr-cloak bench: {photo_result.error}")
                    protects.append(photo_result.seconds)
                    faces = photo_result.faces
            row = {"megapixels": sized.shape[0] * sized.shape[1] / 1e6, "size": f"{sized.shape[1]}x{sized.shape[0]}",
                   "faces": faces, "seconds": statistics.median(totals), "protect_seconds": statistics.median(protects),
                   "peak_rss_mb": memory.peak / 2**20, "rise_mb": memory.rise / 2**20,
                   "steps": run.budget.steps, "threads": torch.get_num_threads()}
            log(f"{row['size']:>11} {row['megapixels']:6.2f} MP  {row['seconds']:6.2f} s  (protect "
                f"{row['protect_seconds']:.2f} s)  peak RSS {row['peak_rss_mb']:.0f} MB (+{row['rise_mb']:.0f})")
            rows.append(row)
    return rows


def fr_cloak_table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'size':>11} {'MP':>6} {'faces':>5} {'s total':>8} {'s protect':>9} {'peak MB':>8} {'rise MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['size']:>11} {r['megapixels']:6.2f} {r['faces']:5d} {r['seconds']:8.2f} "
                     f"{r['protect_seconds']:9.2f} {r['peak_rss_mb']:8.0f} {r['rise_mb']:8.0f}")
    return "\n".join(lines)
