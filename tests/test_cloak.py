"""The personal cloak: its frame geometry, its placement, its file, enrolment and resume (issue 14)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from guardkit.cloak import Cloak, choose_faces, choose_variant, feather, frame_template, place
from guardkit.cloak_file import VERSION, CloakFileError, load_cloak, save_cloak
from guardkit.types import Face

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def arcface_face(cx: float, cy: float, eye_distance: float, index: int = 0) -> Face:
    """A frontal face in arcface5 order with its eyes ``eye_distance`` apart, centred on (cx, cy)."""
    d = eye_distance
    points = ((cx - d / 2, cy - 0.3 * d), (cx + d / 2, cy - 0.3 * d), (cx, cy + 0.2 * d),
              (cx - 0.4 * d, cy + 0.6 * d), (cx + 0.4 * d, cy + 0.6 * d))
    box = (cx - d, cy - 1.1 * d, cx + d, cy + 1.1 * d)
    return Face(index, box, points, "arcface5")  # type: ignore[arg-type]


def spike_cloak(eps: float = 8 / 255, frame: int = 64, psnr_floor: float = 0.0) -> Cloak:
    """A cloak that is zero but for a +eps dot at the canonical left eye."""
    bank = torch.zeros(1, 3, frame, frame)
    x, y = frame_template(frame)[0]
    bank[0, :, int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = eps
    return Cloak(bank, eps=eps, finder="mtcnn", face_models=("dlib",), psnr_floor=psnr_floor)


def test_placement_follows_the_landmarks() -> None:
    """The dot at the frame's left eye lands on the photo's left eye, wherever and however big the face is."""
    image = torch.full((3, 300, 400), 0.5)
    for cx, cy, d in ((120, 150, 40), (260, 140, 80)):
        face = arcface_face(cx, cy, d)
        delta = place(spike_cloak(), image, [face])
        ys, xs = torch.nonzero(delta[0] > 0.5 * delta[0].max(), as_tuple=True)
        eye = face.landmarks[0]
        assert abs(float(xs.float().mean()) - eye[0]) < 0.1 * d
        assert abs(float(ys.float().mean()) - eye[1]) < 0.1 * d


def test_placement_stays_in_budget_and_near_the_face() -> None:
    image = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(0))
    cloak = Cloak(torch.full((2, 3, 64, 64), 8 / 255), eps=8 / 255, finder="mtcnn", face_models=("dlib",))
    face = arcface_face(100, 120, 30)
    delta = place(cloak, image, [face])
    assert float(delta.abs().max()) <= 8 / 255 + 1e-7
    assert float((image + delta).min()) >= 0 and float((image + delta).max()) <= 1
    moved = torch.nonzero(delta.abs().sum(0) > 0)
    assert len(moved) > 0
    assert float(moved[:, 1].max()) < 100 + 4 * 30 and float(moved[:, 1].min()) > 100 - 4 * 30  # the face's neighbourhood
    assert float(delta[:, :, 300:].abs().max()) == 0


def test_placement_keeps_the_psnr_floor() -> None:
    image = torch.full((3, 100, 100), 0.5)
    cloak = Cloak(torch.full((1, 3, 64, 64), 8 / 255), eps=8 / 255, finder="mtcnn", face_models=("dlib",),
                  psnr_floor=40.0)
    delta = place(cloak, image, [arcface_face(50, 50, 30)])
    mse = float(delta.pow(2).mean())
    assert 10 * math.log10(1 / mse) >= 40.0 - 1e-6
    unbounded = place(replace(cloak, psnr_floor=0.0), image, [arcface_face(50, 50, 30)])
    assert 10 * math.log10(1 / float(unbounded.pow(2).mean())) < 40.0  # the floor did bind


def test_feather_has_no_hard_edge() -> None:
    mask = feather(100)
    assert float(mask[0, 0, 50, 50]) == 1.0 and float(mask[0, 0, 0, 50]) == 0.0
    assert float((mask[0, 0, 1:, 50] - mask[0, 0, :-1, 50]).abs().max()) < 0.2


def test_variant_choice_is_stable_and_spread() -> None:
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 50, 60, generator=g) for _ in range(12)]
    chosen = [choose_variant(x, 4) for x in images]
    assert chosen == [choose_variant(x.clone(), 4) for x in images]
    assert len(set(chosen)) >= 3
    assert choose_variant(images[0], 1) == 0


def test_choose_faces() -> None:
    small, big = arcface_face(50, 50, 10), arcface_face(200, 100, 40)
    assert choose_faces([small, big], "largest") == [big]
    assert choose_faces([small, big], "all") == [big, small]
    assert choose_faces([small, big], "2") == [small]
    with pytest.raises(ValueError, match="--face"):
        choose_faces([small], "biggest")


def test_cloak_file_round_trip_and_contents(tmp_path: Path) -> None:
    cloak = Cloak(torch.rand(3, 3, 32, 32) * 2 / 255, eps=4 / 255, finder="mtcnn", face_models=("dlib", "facenet"),
                  psnr_floor=42.3, fill=0.6, info={"photos": 3, "strength": "low", "source": "/home/me/face.jpg"})
    path = save_cloak(cloak, tmp_path / "me.cloak")
    back = load_cloak(path)
    assert torch.equal(back.perturbations, cloak.perturbations)
    assert (back.eps, back.finder, back.face_models, back.psnr_floor, back.fill) == (4 / 255, "mtcnn", ("dlib", "facenet"), 42.3, 0.6)
    assert back.info == {"photos": 3, "strength": "low"}  # nothing about the person or their files is kept
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert set(header) == {"__metadata__", "perturbations"}  # one tensor, no pickle, no embedding
    assert b"/home/me" not in raw


def test_bad_cloak_files_are_one_line_errors(tmp_path: Path) -> None:
    cloak = Cloak(torch.rand(1, 3, 16, 16) / 255, eps=4 / 255, finder="mtcnn", face_models=("dlib",))
    path = save_cloak(cloak, tmp_path / "me.cloak")
    raw = path.read_bytes()
    cases = {
        "truncated": raw[: len(raw) - 100],
        "tampered": raw[:-8] + bytes(8),
        "not": b"PK\x03\x04 a zip, not a cloak",
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.cloak"
        bad.write_bytes(data)
        with pytest.raises(CloakFileError) as info:
            load_cloak(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    newer = raw.replace(f'"version":"{VERSION}"'.encode(), b'"version":"9"')
    assert newer != raw
    (tmp_path / "newer.cloak").write_bytes(newer)
    with pytest.raises(CloakFileError, match="version"):
        load_cloak(tmp_path / "newer.cloak")
    with pytest.raises(CloakFileError, match="cannot read"):
        load_cloak(tmp_path / "missing.cloak")
