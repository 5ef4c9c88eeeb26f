"""The Engine on files: capability checks, batches that survive bad photos, resume, safe outputs."""

from __future__ import annotations

import shutil
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from guardkit import hookimpl
from guardkit.config import Budget, RunConfig
from guardkit.engine import Engine, psnr
from guardkit.errors import CapabilityError, UnknownPartError
from guardkit.testing import TinyFaceModel, TinyFaceModelPlugin

FAST = RunConfig(budget=Budget(eps=4 / 255, steps=3))


class ScoreOnlyFaceModel(TinyFaceModel):
    differentiable: ClassVar[bool] = False


class ScoreOnlyPlugin:
    @hookimpl
    def guardkit_register_face_models(self, register):
        register("score-only", ScoreOnlyFaceModel, summary="no gradients")


class LoadCountingModel(TinyFaceModel):
    loads: ClassVar[int] = 0

    def load(self):
        type(self).loads += 1
        super().load()


@pytest.fixture(scope="module")
def engine():
    return Engine(plugins=[TinyFaceModelPlugin(), ScoreOnlyPlugin()])


def test_gradient_method_refuses_a_face_model_without_gradients_before_loading(engine):
    with pytest.raises(CapabilityError, match="needs gradients.*'score-only'"):
        engine.check("fr-cloak", face_model="score-only", face_finder="dlib")


def test_unknown_parts_are_one_line_errors(engine):
    with pytest.raises(UnknownPartError, match="Available face models: .*dlib.*tiny"):
        engine.check("fr-cloak", face_model="arcfce", face_finder="dlib")
    with pytest.raises(UnknownPartError, match="unknown method 'nope'"):
        engine.check("nope")


def test_method_that_needs_a_face_model_gets_one(engine):
    with pytest.raises(CapabilityError, match="needs a face model"):
        engine.check("fr-cloak", face_model=None)


@pytest.fixture
def photos(tmp_path, faces_dir):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "obama_small.jpg", src / "a_face.jpg")
    (src / "b_broken.jpg").write_bytes((faces_dir / "obama_small.jpg").read_bytes()[:2000])
    Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(src / "c_noface.png")
    return src


def test_a_bad_photo_does_not_stop_the_others_and_rerun_resumes(engine, photos, tmp_path):
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    result = engine.protect([photos], face_model="tiny", run=FAST, output_dir=out)
    status = {p.source.name: p.status for p in result.photos}
    assert status == {"a_face.jpg": "protected", "b_broken.jpg": "failed", "c_noface.png": "failed"}
    errors = {p.source.name: p.error for p in result.failed}
    assert "b_broken.jpg" in errors["b_broken.jpg"] and "no face" in errors["c_noface.png"]
    written = out / "a_face.protected.png"
    assert sorted(p.name for p in out.iterdir()) == [".guardkit", written.name]  # the output and its record
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # inputs untouched

    done = result.photos[0]
    original = np.asarray(Image.open(photos / "a_face.jpg").convert("RGB"))
    saved = np.asarray(Image.open(written))
    assert saved.shape == original.shape
    assert np.abs(saved.astype(int) - original).max() <= 4 == round(done.linf * 255)
    assert done.psnr == pytest.approx(psnr(original, saved)) and done.faces == 1
    assert not Image.open(written).info.get("exif")

    mtime = written.stat().st_mtime_ns
    again = engine.protect([photos], face_model="tiny", run=FAST, output_dir=out)
    assert [p.status for p in again.photos] == ["skipped", "failed", "failed"]
    assert written.stat().st_mtime_ns == mtime


def test_in_memory_result_saves_and_is_seed_deterministic(engine, faces_dir, tmp_path):
    a = engine.protect([faces_dir / "obama_small.jpg"], face_model="tiny", run=FAST)
    b = engine.protect([faces_dir / "obama_small.jpg"], face_model="tiny", run=FAST)
    assert np.array_equal(a.photos[0].protected, b.photos[0].protected)
    paths = a.save(tmp_path / "mem")
    assert [p.name for p in paths] == ["obama_small.protected.png"]
    assert np.array_equal(np.asarray(Image.open(paths[0])), a.photos[0].protected)


def test_batches_group_photos_of_one_size(engine, faces_dir, tmp_path):
    src = tmp_path / "same"
    src.mkdir()
    for name in ("x.jpg", "y.jpg"):
        shutil.copy(faces_dir / "obama_small.jpg", src / name)
    run = RunConfig(batch_size=2, budget=Budget(eps=4 / 255, steps=2))
    result = engine.protect([src], face_model="tiny", run=run)
    assert [p.status for p in result.photos] == ["protected", "protected"]
    assert all(p.linf <= 4 / 255 + 1e-9 and p.linf > 0 for p in result.photos)


def test_steps_are_reported_for_progress_bars(engine, faces_dir):
    seen = []
    engine.protect([faces_dir / "obama_small.jpg"], face_model="tiny", run=FAST,
                   on_step=lambda step, steps: seen.append((step, steps)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
