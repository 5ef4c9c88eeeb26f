"""The one photo loop (``guardkit.photo_loop``) under ``guardkit run``, ``edit`` and ``eval`` alike: resume
(skip outputs that exist and match, redo stale ones), bad inputs (each named once, the others done) and atomic
writes (a failing write leaves neither a partial output nor a temp file). Each job runs through the CLI on
the shared photo with real parts kept cheap: dlib, one protection step, a tiny random-weight InstructPix2Pix."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from guardkit.cli import app
from guardkit.config import Budget, RunConfig
from guardkit.engine import Engine
from guardkit.errors import GuardkitError
from guardkit.imageio import is_done, load_rgb
from guardkit.photo_loop import failure_line, to_pixels

pytestmark = pytest.mark.usefixtures("one_thread")

JOBS = ["run", "edit", "eval"]
runner = CliRunner()


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory):
    pytest.importorskip("diffusers")
    from test_ip2p import build_tiny_ip2p

    return build_tiny_ip2p(tmp_path_factory.mktemp("ip2p") / "instruct-pix2pix")


def invoke(job: str, inputs: list[Path], out: Path, ip2p: Path):
    """``guardkit <job>`` on ``inputs`` into ``out``, as cheap as each job allows."""
    if job == "run":
        args = ["run", *map(str, inputs), "-o", str(out), "--fr", "dlib", "--steps", "1", "-O", "eot_draws=1"]
    elif job == "edit":
        args = ["edit", *map(str, inputs), "-o", str(out), "--prompt", "let the person smile", "--editor", "ip2p",
                "--editor-path", str(ip2p), "-E", "resolution=32", "-E", "steps=2", "--resolution", "128"]
    else:
        args = ["eval", *map(str, inputs), "-o", str(out), "--methods", "fr-cloak", "--purify", "none", "--metrics",
                "psnr", "--size", "64", "--steps", "1", "-O", "eot_draws=1"]
    return runner.invoke(app, [*args, "--json"])


def output_of(job: str, out: Path, stem: str) -> Path:
    """Where the job writes (or caches) the protected or edited photo of input ``stem``."""
    if job == "eval":  # named by the photo's id: its file name and a hash of its path
        folder = out / "images" / "protected" / "fr-cloak"
        cached = sorted(folder.glob(f"{stem}.*_*.png")) if folder.is_dir() else []
        return cached[0] if cached else folder / f"{stem}.png"
    return out / f"{stem}.protected.png"


def statuses(job: str, result) -> dict[str, str]:
    if job == "eval":
        return {}
    return {Path(p["source"]).name: p["status"] for p in json.loads(result.stdout)["photos"]}


@pytest.fixture
def face(tmp_path, faces_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(faces_dir / "obama_small.jpg", folder / "a_face.jpg")
    return folder


@pytest.mark.parametrize("job", JOBS)
def test_resume_skips_finished_outputs_and_redoes_stale_ones(job, face, tmp_path, ip2p):
    out = tmp_path / "out"
    first = invoke(job, [face], out, ip2p)
    assert first.exit_code == 0, first.output
    written = output_of(job, out, "a_face")
    assert is_done(written)
    size = Image.open(written).size
    mtime = written.stat().st_mtime_ns

    again = invoke(job, [face], out, ip2p)
    assert again.exit_code == 0, again.output
    assert written.stat().st_mtime_ns == mtime  # not written again
    if job == "eval":
        assert len((out / "samples.csv").read_text().strip().splitlines()) == 2  # header + the one sample, once
    else:
        assert statuses(job, again) == {"a_face.jpg": "skipped"}

    good = written.read_bytes()
    for stale in (good[: len(good) // 2],  # cut short, as a crashed writer that was not atomic leaves it
                  _png_bytes(np.zeros((size[1] + 8, size[0], 3), np.uint8))):  # whole, but not this run's size
        written.write_bytes(stale)
        if job == "eval":  # its samples are done when samples.csv says so: an interrupted run had not written them
            (out / "samples.csv").unlink()
        redone = invoke(job, [face], out, ip2p)
        assert redone.exit_code == 0, redone.output
        assert is_done(written, size=size) and written.read_bytes() != stale
        if job != "eval":
            assert statuses(job, redone) == {"a_face.jpg": "protected" if job == "run" else "edited"}


@pytest.mark.parametrize("job", JOBS)
def test_each_bad_input_is_named_once_and_the_others_are_done(job, face, tmp_path, faces_dir, ip2p):
    (face / "b_broken.jpg").write_bytes((faces_dir / "obama_small.jpg").read_bytes()[:2000])
    Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(face / "c_noface.png")
    out = tmp_path / "out"
    result = invoke(job, [tmp_path / "typo.jpg", face], out, ip2p)
    assert result.exit_code == 1, result.output  # some photos failed, the others were done
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception)
    lines = result.stderr.splitlines()
    for name, problem in (("typo.jpg", "no such file"), ("b_broken.jpg", "corrupt"), ("c_noface.png", "no face")):
        named = [line for line in lines if name in line]
        assert len(named) == 1 and problem in named[0], (name, result.stderr)
    assert is_done(output_of(job, out, "a_face"))
    assert not output_of(job, out, "b_broken").exists() and not output_of(job, out, "c_noface").exists()
    if job != "eval":
        assert statuses(job, result) == {"typo.jpg": "failed", "a_face.jpg": "protected" if job == "run" else "edited",
                                         "b_broken.jpg": "failed", "c_noface.png": "failed"}


@pytest.mark.parametrize("job", JOBS)
def test_a_failing_write_leaves_no_partial_output_and_is_named(job, face, tmp_path, ip2p, monkeypatch):
    out = tmp_path / "out"
    save = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):  # under out/, the encoder writes part of a file, then the disk is full
        if not str(getattr(fp, "name", fp)).startswith(str(out)):
            return save(self, fp, *args, **kwargs)  # in memory (a method's JPEG round trip): as ever
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    result = invoke(job, [face], out, ip2p)
    monkeypatch.undo()
    assert result.exit_code == 1, result.output  # the photo failed; the run itself did not crash
    named = [line for line in result.stderr.splitlines() if "a_face.jpg" in line]
    assert len(named) == 1 and "No space left" in named[0], result.stderr
    left = [p for p in out.rglob("*") if p.is_file() and (p.suffix in (".png", ".tmp") or p.name.startswith("."))]
    assert left == []  # neither the output nor a temp file


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- one set of defaults
@pytest.mark.parametrize("api_run", [None, RunConfig(seed=0)])
def test_guardkit_run_and_engine_protect_write_the_same_bytes(tmp_path, faces_dir, api_run):
    """The CLI and the Python API share their defaults (``Engine.resolve_strength``): with the same options
    they run the same preset, budget and method options, so they write identical files. A run given only for
    its seed does not turn the method's defaults into ``Budget()``'s 100 steps."""
    photo = faces_dir / "obama_small.jpg"
    cli = runner.invoke(app, ["run", str(photo), "-o", str(tmp_path / "cli"), "--fr", "dlib", "--steps", "2",
                              "-O", "eot_draws=1"])
    assert cli.exit_code == 0, cli.output
    result = Engine().protect([photo], face_model="dlib", steps=2, options={"eot_draws": 1}, run=api_run,
                              output_dir=tmp_path / "api")
    assert [p.status for p in result.photos] == ["protected"]
    assert result.budget is not None and result.budget.steps == 2
    name = "obama_small.protected.png"
    assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()


def test_a_chosen_budget_is_kept_and_a_default_one_is_the_methods():
    engine = Engine()
    low = engine.registry.get("method", "fr-cloak").factory.strengths["low"]
    run, options = engine.resolve_strength("fr-cloak", RunConfig(seed=3), None, None)
    assert (run.budget.eps, run.budget.steps, run.seed) == (low.eps, low.steps, 3) and options == dict(low.options)
    run, options = engine.resolve_strength("fr-cloak", RunConfig(budget=Budget(steps=7)), None, {"x": 1})
    assert run.budget.steps == 7 and options == {"x": 1}
    run, _ = engine.resolve_strength("fr-cloak", RunConfig(), None, None, steps=100)  # asked for: Budget()'s count
    assert run.budget.steps == 100


# ----------------------------------------------------------------------------- never trust a method
def test_to_pixels_projects_checks_and_quantises():
    clean = torch.full((1, 3, 4, 4), 0.5)
    wild = clean + torch.linspace(-1, 1, 48).view(1, 3, 4, 4)
    budget = Budget(eps=4 / 255)
    pixels = to_pixels(wild, clean, budget)
    assert pixels.dtype == torch.uint8
    assert (pixels.float() - 127.5).abs().max() <= 4.5  # inside the budget, on the 8-bit grid
    assert torch.equal(to_pixels(torch.tensor([[[[2.0, -1.0]]]])), torch.tensor([[[[255, 0]]]], dtype=torch.uint8))
    with pytest.raises(GuardkitError, match="the edit produced non-finite pixels"):
        to_pixels(torch.tensor([[[[math.nan]]]]), what="the edit")


@pytest.mark.parametrize("eps", [0.03, 5.5 / 255, 4 / 255, 1 / 255])
def test_saved_linf_never_exceeds_an_eps_off_the_8_bit_grid(eps):
    clean = torch.full((1, 3, 4, 4), 100 / 255)
    for push in (1.0, -1.0, 0.5 / 255):  # far past the budget either way, and a nudge that rounds up
        pixels = to_pixels(clean + push, clean, Budget(eps=eps))
        assert (pixels.float() - 100).abs().max() / 255 <= eps, (eps, push)
    assert (to_pixels(clean + 1.0, clean, Budget(eps=eps)).float() - 100).max() == math.floor(eps * 255 + 1e-6)


def test_saved_l2_stays_inside_the_ball_after_rounding():
    clean = torch.full((1, 3, 4, 4), 100 / 255)
    nudged = clean + 0.6 / 255  # L2 4.16/255 over 48 values: inside 4.2/255, but every value rounds to +1
    budget = Budget(eps=4.2 / 255, norm="l2")
    assert (to_pixels(nudged, clean, budget).float() - 100).norm() / 255 <= budget.eps
    inside = clean + torch.where(torch.arange(48).view(1, 3, 4, 4) < 4, 1 / 255, 0.0)  # on the grid, norm 2/255
    assert torch.equal(to_pixels(inside, clean, budget), torch.round(inside * 255).to(torch.uint8))  # kept as is


def test_failure_lines_name_the_photo_once_and_keep_one_line():
    assert failure_line("a.jpg", GuardkitError("a.jpg: no face found")) == "a.jpg: no face found"
    assert failure_line("a.jpg", RuntimeError("CUDA out of memory\nmore")) == "a.jpg: RuntimeError: CUDA out of memory"
    assert failure_line(Path("x/b.png"), GuardkitError("cannot write")) == "x/b.png: cannot write"


def test_engine_edit_and_evaluate_are_the_library_functions(tmp_path, faces_dir, ip2p):
    """``Engine.edit`` / ``Engine.evaluate`` run the same loop in memory and on files."""
    engine = Engine()
    photo = faces_dir / "obama_small.jpg"
    (edited,) = engine.edit([photo], prompt="let the person smile", editor="ip2p", resolution=128,
                            editor_options={"path": str(ip2p), "resolution": 32, "steps": 2})
    assert edited.status == "edited" and edited.edited.shape == (96, 128, 3) and edited.output is None
    from guardkit.evaluate import EvalConfig

    result = engine.evaluate([photo], EvalConfig(methods=["none"], metrics=["psnr"], size=64), tmp_path / "eval")
    assert [row["psnr"] for row in result.rows] == [math.inf] and not result.failed
    (source,) = (tmp_path / "eval" / "images" / "source").glob("obama_small.jpg_*.png")  # named by the photo's id
    assert load_rgb(source).shape == (64, 64, 3)
