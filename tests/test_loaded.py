"""``Engine(part_cache=PartCache())``: the public hook by which the service's workers and Ray's actors load
each part once. Real parts (the jpeg purifier, dlib's finder and face model), no mocks."""

from __future__ import annotations

import pytest

from guardkit.config import RunConfig
from guardkit.engine import Engine
from guardkit.errors import WeightsError
from guardkit.loaded import PartCache, loaded_engine


def test_a_cached_engine_loads_each_part_once_per_build_arguments(tmp_path):
    engine = Engine(part_cache=PartCache())
    run = RunConfig()
    first = engine.load_part("purifier", "jpeg", run, quality=75)
    assert engine.load_part("purifier", "jpeg", RunConfig(seed=3), quality=75) is first  # seed: not a part's
    assert engine.load_part("purifier", "jpeg", run, quality=60) is not first  # other options: another part
    assert engine.load_purifier("jpeg75", run) is first  # every load goes through the cache
    assert engine.part_cache.loads == 2
    assert Engine().load_part("purifier", "jpeg", run, quality=75) is not first  # no cache: built per call


def test_protect_reuses_the_cached_face_models(faces_dir, tmp_path):
    engine = loaded_engine()
    photo = faces_dir / "obama_small.jpg"
    engine.protect([photo], face_model="dlib", steps=1)
    loads = engine.part_cache.loads
    assert loads == 2  # dlib's finder and face model, built by build_method through load_part
    engine.protect([photo], face_model="dlib", steps=1, strength="mid")
    assert engine.part_cache.loads == loads


def test_a_part_that_failed_to_load_keeps_failing_without_retrying(tmp_path, monkeypatch):
    import guardkit.weights

    monkeypatch.delenv(guardkit.weights.DLIB_MODELS_ENV, raising=False)
    monkeypatch.setattr(guardkit.weights, "_package_models_dir", lambda: None)
    engine = loaded_engine()
    run = RunConfig(weights_dir=tmp_path)
    for _ in range(2):
        with pytest.raises(WeightsError, match="dlib_face_recognition_resnet_model_v1.dat"):
            engine.load_part("face_model", "dlib", run)
    assert engine.part_cache.loads == 1
