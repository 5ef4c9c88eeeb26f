"""``guardkit run`` says when a protected face still matches its original under an attacked model, and names the
next stronger preset of the method."""

from __future__ import annotations

import math
from pathlib import Path

from guardkit.cli.run import stronger_advice
from guardkit.config import Budget
from guardkit.engine import Engine
from guardkit.protecting import PhotoResult, ProtectResult
from guardkit.strength import stronger_strength
from guardkit.plugins.methods.fr_cloak import FrCloak


def result(*distances: dict[str, float]) -> ProtectResult:
    photos = [PhotoResult(Path(f"p{i}.jpg"), "protected", faces=1, distances=d) for i, d in enumerate(distances)]
    photos.append(PhotoResult(Path("broken.jpg"), "failed", error="broken.jpg: not an image"))
    return ProtectResult(photos, thresholds={"dlib": 0.6, "facenet": 0.55})


def test_the_next_stronger_preset_is_the_smallest_cap_above():
    assert stronger_strength(FrCloak, 4 / 255)[0] == "mid"
    assert stronger_strength(FrCloak, 8 / 255)[0] == "high"
    assert stronger_strength(FrCloak, 16 / 255) is None and stronger_strength(object, 4 / 255) is None


def test_advice_names_the_models_that_still_match_and_the_stronger_preset():
    engine = Engine()
    low, high = Budget(eps=4 / 255, steps=60), Budget(eps=16 / 255, steps=60)
    assert stronger_advice(engine, result({"dlib": 0.7, "facenet": 0.6}), "fr-cloak", low) == ""
    assert stronger_advice(engine, result({"dlib": math.nan}), "fr-cloak", low) == ""
    one = stronger_advice(engine, result({"dlib": 0.52, "facenet": 0.6}, {"dlib": 0.7, "facenet": 0.7}), "fr-cloak", low)
    assert one.startswith("1 photo still matches the original under dlib at eps 4/255") and "--strength mid" in one
    two = stronger_advice(engine, result({"dlib": 0.5}, {"facenet": 0.54}), "fr-cloak", high)  # below 0.55: a match
    assert two.startswith("2 photos still match the original under dlib, facenet") and "--strength" not in two
