"""Enrolment adds a photo's samples together: a photo whose mirror image cannot be used adds none (real MTCNN
and dlib; no model is mocked)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardkit import Engine
from guardkit.config import RunConfig
from guardkit.ensemble import Member
from guardkit.enroll import EnrollSettings, make_sample
from guardkit.enrolment import enroll_photos, find_all, mirrored
from guardkit.errors import NoFaceError

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces")
SETTINGS = EnrollSettings(steps=1, variants=1, frame=64, draws=1, jpeg_every=0)


@pytest.fixture(scope="module")
def tiny_photo(tmp_path_factory) -> Path:
    """obama_small.jpg at 70 px wide: dlib's HOG finder sees the face, but not in the mirror image."""
    image = Image.open(FACES / "obama_small.jpg").convert("RGB")
    path = tmp_path_factory.mktemp("tiny") / "tiny.png"
    image.resize((70, round(image.height * 70 / image.width))).save(path)
    return path


def test_the_tiny_photo_fails_only_in_the_mirror(tiny_photo: Path) -> None:
    """The premise of the test below, checked on the real finders."""
    engine, run = Engine(), RunConfig()
    finders = {name: engine.load_part("face_finder", name, run) for name in ("mtcnn", "dlib")}
    member = Member("dlib", engine.load_part("face_model", "dlib", run), "dlib")
    image = np.array(Image.open(tiny_photo))
    found = {k: [replace(f, finder=k) for f in v] for k, v in find_all(image, finders).items()}
    face = found["mtcnn"][0]
    make_sample(image, "tiny", face, found, [member], SETTINGS)  # the photo itself is usable
    flipped, twin, twin_found = mirrored(image, face, finders)
    with pytest.raises(NoFaceError, match="dlib"):
        make_sample(flipped, "tiny (mirrored)", twin, twin_found, [member], SETTINGS)


def test_a_photo_whose_mirror_fails_adds_no_sample(tiny_photo: Path) -> None:
    """Listed as failed, it must not train the cloak either: enrolled alone, nothing is left to learn from."""
    with pytest.raises(NoFaceError, match="no photo could be enrolled") as info:
        enroll_photos(Engine(), [tiny_photo], face_models=["dlib"], finder="mtcnn", settings=SETTINGS)
    assert str(tiny_photo) in str(info.value)
