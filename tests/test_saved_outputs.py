"""What ``Engine.protect`` writes into an output folder and says about it: resume skips only an output that this
photo made under these settings (another photo's under the same name is kept and never taken for done), and
the figures reported are those of the file written (JPEG included). Tiny random-weight face model, real photo."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardkit.config import Budget, RunConfig
from guardkit.engine import Engine, psnr
from guardkit.imageio import is_done, load_rgb
from guardkit.photo_loop import PhotoLoop, gather
from guardkit.protecting import PhotoResult
from guardkit.testing import TinyFaceModelPlugin

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = RunConfig(budget=Budget(eps=4 / 255, steps=2))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(plugins=[TinyFaceModelPlugin()])


@pytest.fixture
def two_cameras(tmp_path: Path, faces_dir: Path) -> tuple[Path, Path]:
    """``alice/IMG_0001.jpg`` and ``bob/IMG_0001.jpg``: two photos of one size under one name."""
    alice, bob = tmp_path / "alice" / "IMG_0001.jpg", tmp_path / "bob" / "IMG_0001.jpg"
    alice.parent.mkdir()
    bob.parent.mkdir()
    shutil.copy(faces_dir / "obama_small.jpg", alice)
    Image.fromarray(np.ascontiguousarray(load_rgb(alice)[:, ::-1])).save(bob, quality=95)
    return alice, bob


def protect(engine: Engine, photo: Path, out: Path, run: RunConfig = FAST, **kwargs) -> PhotoResult:
    (done,) = engine.protect([photo], face_model="tiny", run=run, output_dir=out, **kwargs).photos
    return done


def test_resume_never_takes_another_photos_output_for_done(engine, two_cameras, tmp_path):
    alice, bob = two_cameras
    out = tmp_path / "out"
    first = protect(engine, alice, out)
    assert first.status == "protected" and first.output == out / "IMG_0001.protected.png"
    alices = first.output.read_bytes()

    second = protect(engine, bob, out)  # same name, same size, another photo: protected, under another name
    assert second.status == "protected", second.error
    assert second.output != first.output and is_done(second.output)
    assert first.output.read_bytes() == alices  # alice's output is hers still
    assert not np.array_equal(load_rgb(second.output), load_rgb(first.output))

    assert protect(engine, alice, out).status == "skipped"  # each resumes its own
    again = protect(engine, bob, out)
    assert again.status == "skipped" and again.output == second.output


def test_resume_redoes_an_output_made_under_other_settings(engine, two_cameras, tmp_path):
    alice, _ = two_cameras
    out = tmp_path / "out"
    weak = protect(engine, alice, out)
    weak_bytes = weak.output.read_bytes()
    for run in (RunConfig(budget=Budget(eps=8 / 255, steps=2)), RunConfig(seed=1, budget=FAST.budget),
                RunConfig(budget=Budget(eps=8 / 255, steps=3))):
        redone = protect(engine, alice, out, run=run)
        assert redone.status == "protected" and redone.output == weak.output  # its own output: done again, in place
        assert protect(engine, alice, out, run=run).status == "skipped"
    assert weak.output.read_bytes() != weak_bytes


def test_resume_reads_no_input_whose_output_is_missing(faces_dir, tmp_path):
    photo = faces_dir / "obama_small.jpg"
    asked: list[Path] = []
    loop = PhotoLoop(gather([photo], output_dir=tmp_path / "out"), PhotoResult,
                     expected_size=lambda path: asked.append(path) or (1, 1))
    assert not loop.is_finished(photo) and asked == []


def test_a_jpeg_run_reports_the_figures_of_the_saved_file(engine, faces_dir, tmp_path):
    photo = faces_dir / "obama_small.jpg"
    done = protect(engine, photo, tmp_path / "out", fmt="jpeg")
    assert done.status == "protected" and done.output.suffix == ".jpg"
    original, saved = load_rgb(photo), load_rgb(done.output)
    assert done.linf == np.abs(saved.astype(int) - original).max() / 255
    assert done.psnr == pytest.approx(psnr(original, saved))
