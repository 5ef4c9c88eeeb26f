"""The fast paths of the encoder loop (channels-last, bf16 autocast, torch.compile and its fallback) give
protections that score like the plain fp32 path's on FaceLock's own objective; the port of FaceLock's
released loop (``benchmarks/reference_facelock.py``) lands in the same range; the benchmark scripts and
``guardkit bench protect`` run. Tiny parts on CPU. No timing is asserted: speed is measured in benchmarks/,
never here.

Tolerance (stated): the fast path's output, scored in fp32 on the full FaceLock objective, is within
10% of the plain fp32 path's output's score, and both beat the clean photo and a random perturbation of
the same budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from guardkit.attack import project
from guardkit.bench import padded_photo
from guardkit.config import Budget
from guardkit.errors import ConfigError
from guardkit.fast_path import set_layout
from guardkit.latent_attack import LatentAttackConfig
from guardkit.plugins.encoders.sd_vae import SDVAE
from guardkit.testing import TinyFaceModel, save_tiny_vae

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the measuring kit and the released loop's port are scripts there
import bench_facelock  # noqa: E402
import reference_facelock  # noqa: E402
import speed_suite  # noqa: E402

RES = 32
EPS = 8 / 255
STEPS = 8
TOLERANCE = 0.10


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    encoder = SDVAE(path=str(save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae", "sd-vae")))
    encoder.load()
    face_model = TinyFaceModel()
    face_model.load()
    return encoder, face_model, speed_suite.random_lpips()


@pytest.fixture
def photos(parts):
    yield speed_suite.synthetic_portraits(2, RES, seed=3)
    encoder, face_model, lpips = parts
    set_layout([encoder.vae, face_model.net, lpips], False)  # a channels-last test converted them


def protect(parts, images, faces, seed=0, **options):
    encoder, face_model, lpips = parts
    method, _ = speed_suite.guardkit_facelock(encoder, face_model, lpips, resolution=RES, steps=STEPS, seed=seed,
                                              **options)
    budget = Budget(eps=EPS, steps=STEPS)
    return project(method.protect(images, faces, budget), images, budget)


def score(parts, clean, adv, faces):
    encoder, face_model, lpips = parts
    return speed_suite.facelock_objective(encoder, face_model, lpips, clean, adv, faces)


def noise_of(images):
    gen = torch.Generator().manual_seed(11)
    return project(images + (torch.rand(images.shape, generator=gen) * 2 - 1) * EPS, images, Budget(eps=EPS))


def test_defaults_are_the_plain_loop():
    config = LatentAttackConfig()
    assert (config.autocast, config.channels_last, config.compile) == ("none", False, False)
    with pytest.raises(ConfigError, match="autocast"):
        LatentAttackConfig(autocast="fp8")


@pytest.mark.parametrize("options", [{"channels_last": True}, {"autocast": "bf16"},
                                     {"autocast": "bf16", "channels_last": True}],
                         ids=["channels-last", "bf16", "bf16+channels-last"])
def test_fast_path_scores_like_the_plain_path(parts, photos, options):
    """The fast path optimises the objective as well as the plain loop does: each photo's score is within
    ``TOLERANCE`` of the plain loop's at the same seed or above the lowest the plain loop reaches over seeds 0-2 (8
    steps of sign-PGD land anywhere in a range as wide as 0.24-0.48 from seed to seed, so one seed alone cannot
    tell a slower optimiser from another random start)."""
    images, faces = photos
    plain = protect(parts, images, faces)
    fast = protect(parts, images, faces, **options)
    assert (fast - images).abs().max() <= EPS + 1e-6 and fast.min() >= 0 and fast.max() <= 1
    s_plain, s_fast = score(parts, images, plain, faces), score(parts, images, fast, faces)
    s_clean, s_noise = score(parts, images, images, faces), score(parts, images, noise_of(images), faces)
    assert torch.isfinite(s_fast).all()
    close = (s_fast - s_plain).abs() <= TOLERANCE * s_plain.abs()
    if not close.all():
        lowest = torch.stack([s_plain] + [score(parts, images, protect(parts, images, faces, seed=seed), faces)
                                          for seed in (1, 2)]).min(dim=0).values
        assert (close | (s_fast >= (1 - TOLERANCE) * lowest)).all(), (s_fast, s_plain, lowest)
    assert (s_plain > s_clean).all() and (s_fast > s_clean).all(), (s_plain, s_fast, s_clean)
    assert (s_plain > s_noise).all() and (s_fast > s_noise).all(), (s_plain, s_fast, s_noise)


def test_compile_failure_falls_back_to_the_eager_loop(parts, photos, monkeypatch):
    images, faces = photos
    plain = protect(parts, images, faces)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        compiled = protect(parts, images, faces, compile=True)
    assert torch.equal(compiled, plain)


@pytest.mark.xfail(strict=True, raises=RuntimeWarning,
                   reason="torch 2.13 (CPU, aot_eager) fails to compile the step for a one-photo batch ('Expected "
                          "X.is_contiguous(memory_format)'), and every photo is now optimised on its own; the loop falls "
                          "back to eager with a warning. Strict: passes again once compiling a one-photo step works.")
def test_compiled_step_scores_like_the_plain_path(parts, photos, monkeypatch):
    """The compiled path itself, with the quick ``aot_eager`` backend (inductor is the default)."""
    monkeypatch.setenv("GUARDKIT_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    images, faces = photos
    plain = protect(parts, images, faces)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn: fail instead
        compiled = protect(parts, images, faces, compile=True)
    s_plain, s_compiled = score(parts, images, plain, faces), score(parts, images, compiled, faces)
    assert ((s_compiled - s_plain).abs() <= TOLERANCE * s_plain.abs()).all(), (s_compiled, s_plain)


def test_reference_loop_lands_in_the_same_range(parts, photos):
    encoder, face_model, lpips = parts
    images, faces = photos
    x, face = images[:1], faces[:1]
    # the released code's units are [-1, 1]: eps doubles; its step is eps / 3, decayed to a hundredth
    ref = reference_facelock.reference_facelock(x, face, vae=encoder.vae, face_model=face_model, lpips=lpips,
                                                             eps=2 * EPS, step_size=2 * EPS / 3, iters=STEPS)
    assert ref.shape == x.shape and (ref - x).abs().max() <= EPS + 1e-5
    ours = protect(parts, x, face)
    s_ref, s_ours, s_clean = score(parts, x, ref, face), score(parts, x, ours, face), score(parts, x, x, face)
    assert (s_ref > s_clean).all() and (s_ours > s_clean).all()
    assert (s_ref / s_ours > 1 / 3).all() and (s_ref / s_ours < 3).all(), (s_ref, s_ours)
    with pytest.raises(ValueError, match="batch 1"):
        reference_facelock.reference_facelock(images, faces, vae=encoder.vae, face_model=face_model, lpips=lpips,
                                              iters=1)


def test_padded_photo_keeps_the_face_size():
    import numpy as np

    image = np.full((100, 80, 3), 7, dtype=np.uint8)
    image[40:60, 30:50] = 200
    big = padded_photo(image, 0.032)
    assert big.shape[:2] == (200, 160) and (big == 200).all(axis=2).sum() == 400
    small = padded_photo(image, 0.002)
    assert small.shape[:2] == (50, 40) and (small == 200).all(axis=2).sum() == 400


def test_facelock_bench_script_runs(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_facelock.main(["--resolution", "32", "--steps", "2", "--device", "cpu", "--batch", "1",
                                "--face-model", "tiny", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [row["name"] for row in report["rows"]]
    assert names[0] == "reference (released loop)" and "guardkit fp32" in names
    assert names[-1] == "guardkit fp32+channels-last" and report["args"]["resolution"] == 32
    for row in report["rows"]:
        assert row["seconds_per_image"] > 0 and row["images_per_second"] > 0 and row["peak_mb"] > 0
        assert row["ratio"] > 0
    assert "reference (released loop)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="autocast"):
        bench_facelock.main(["--resolution", "32", "--autocast", "fp8"])


@pytest.mark.parametrize("script", ["bench_facelock.py", "bench_fr_cloak.py", "reference_facelock.py"])
def test_benchmark_scripts_answer_help(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


def test_bench_protect_command_runs(faces_dir, tmp_path):
    """``guardkit bench protect``: the public Engine on the user's photo, as it is and padded around the face."""
    from guardkit.cli import app
    from typer.testing import CliRunner

    photo = faces_dir / "obama_small.jpg"
    result = CliRunner().invoke(app, ["bench", "protect", str(photo), "--fr", "dlib", "--steps", "1", "--repeats",
                                      "1", "--megapixels", "0,0.2", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "fr-cloak" and [row["size"] for row in report["rows"]] == ["320x240", "516x387"]
    for row in report["rows"]:
        assert row["faces"] == 1 and row["steps"] == 1 and row["threads"] == 1 and row["repeats"] == 1
        assert row["seconds"] >= row["protect_seconds"] > 0 and row["peak_mb"] > 0
    missing = CliRunner().invoke(app, ["bench", "protect", str(tmp_path / "nope.jpg")])
    assert missing.exit_code == 2 and "nope.jpg" in missing.output
    faceless = tmp_path / "flat.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 120, 120)).save(faceless)
    no_face = CliRunner().invoke(app, ["bench", "protect", str(faceless), "--fr", "dlib", "--steps", "1"])
    assert no_face.exit_code == 2 and "no face" in no_face.output and "Traceback" not in no_face.output


@pytest.mark.parametrize("kind", ["sd-vae", "flux"])
def test_objective_equals_the_released_loops_loss(kind, parts, tmp_path):
    """guardkit's FaceLock objective and the released loop's loss, on the same inputs, at steps before,
    between and after the term switches: equal to 1e-4, up to the constant 1 of ``1 - cos`` vs ``-cos``."""
    from guardkit.attack import combine
    from guardkit.latent_attack import active_terms
    from guardkit.plugins.encoders.flux_vae import FluxVAE
    from guardkit.plugins.methods.facelock import FaceLock
    from guardkit.view import View

    _, face_model, lpips = parts
    if kind == "sd-vae":
        encoder = parts[0]
    else:
        encoder = FluxVAE(path=str(save_tiny_vae(tmp_path / "vae", "flux")))
        encoder.load()
    images, faces = speed_suite.synthetic_portraits(1, RES, seed=5)
    gen = torch.Generator().manual_seed(2)
    adv = (images + (torch.rand(images.shape, generator=gen) * 2 - 1) * EPS).clamp(0, 1)
    losses = speed_suite.facelock_losses(lpips)
    names = [t.name for t in losses]
    X, X_adv = images * 2 - 1, adv * 2 - 1
    with torch.no_grad():
        clean_latent = encoder.vae.encode(X).latent_dist.mean
        view = View(images, adv, faces, face_model=face_model, encoder=encoder, face_source="decoded")
        for i in (10, 25, 26, 34, 35, 99):
            released = reference_facelock.reference_facelock_loss(X_adv, X, clean_latent, i, 100, vae=encoder.vae,
                                                                  face_model=face_model, lpips=lpips, faces=faces)
            on = active_terms(names, i, 100, FaceLock.starts, FaceLock.starts_after)
            ours = combine(losses, view, on) - (1.0 if "face-cosine" in on else 0.0)
            assert torch.allclose(ours, released.float(), rtol=1e-4, atol=1e-6), (i, ours, released)
