"""The ``.cloak`` file refuses edited, out-of-range and damaged metadata in one line naming the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from guardkit.cloak import Cloak
from guardkit.cloak_file import CloakFileError, load_cloak, save_cloak


def a_cloak(eps: float = 8 / 255, **changes: Any) -> Cloak:
    return Cloak(torch.full((2, 3, 16, 16), 1 / 255), eps=eps, finder="mtcnn", face_models=("dlib",),
                 psnr_floor=38.3, fill=0.75, kind="personal-cloak", info={"photos": 3}, **changes)


def header_of(data: bytes) -> dict[str, str]:
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]


def rewritten(data: bytes, cloak_json: str, **header: str) -> bytes:
    """The same tensor with the ``cloak`` metadata (and any header field) replaced, checksum left as it was."""
    return save(load(data), metadata={**header_of(data), "cloak": cloak_json, **header})


def refused(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CloakFileError) as info:
        load_cloak(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_edited_metadata_fails_the_checksum(tmp_path: Path) -> None:
    """The checksum covers the metadata too: an eps of 1 with no PSNR floor, another kind, other face models or
    finder, another fill, each written over a genuine file, is refused."""
    data = save_cloak(a_cloak(), tmp_path / "me.cloak").read_bytes()
    meta = json.loads(header_of(data)["cloak"])
    for i, change in enumerate(({"eps": 1.0, "psnr_floor": 0.0}, {"kind": "fr-cloak"}, {"face_models": ["x"]},
                                {"finder": "dlib"}, {"fill": 0.5}, {"info": {"photos": 30}})):
        message = refused(tmp_path, f"edited{i}.cloak", rewritten(data, json.dumps({**meta, **change})))
        assert "checksum" in message, change
    assert load_cloak(tmp_path / "me.cloak").eps == 8 / 255  # the genuine file still loads


def test_out_of_range_values_are_refused_even_when_sealed(tmp_path: Path) -> None:
    """A file whose checksum matches (written by save_cloak) but whose budget is beyond any strength guardkit has
    (eps above 32/255) is refused: the values are checked, not only the checksum."""
    bank = torch.full((1, 3, 16, 16), 0.2)
    save_cloak(Cloak(bank, eps=0.25, finder="mtcnn", face_models=("dlib",)), tmp_path / "wide.cloak")
    with pytest.raises(CloakFileError, match="eps") as info:
        load_cloak(tmp_path / "wide.cloak")
    assert str(tmp_path / "wide.cloak") in str(info.value)
    save_cloak(Cloak(torch.zeros(1, 3, 16, 16), eps=32 / 255, finder="mtcnn", face_models=("dlib",)),
               tmp_path / "edge.cloak")
    assert load_cloak(tmp_path / "edge.cloak").eps == 32 / 255  # the largest budget allowed still loads


def test_an_older_format_says_to_enrol_again(tmp_path: Path) -> None:
    """Version 1 files (checksum over the tensor alone) are refused with one line saying to enrol again."""
    data = save_cloak(a_cloak(), tmp_path / "me.cloak").read_bytes()
    tensor = load(data)["perturbations"]
    meta = {"kind": "personal-cloak", "finder": "mtcnn", "face_models": ["dlib"], "eps": 8 / 255, "psnr_floor": 38.3,
            "fill": 0.75, "frame": 16, "variants": 2, "info": {"photos": 3},
            "sha256": hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()}
    old = save({"perturbations": tensor}, metadata={"format": "guardkit-cloak", "version": "1",
                                                    "cloak": json.dumps(meta, sort_keys=True)})
    message = refused(tmp_path, "old.cloak", old)
    assert "version 1" in message and "enrol" in message


@pytest.mark.parametrize("damage", ["huge-frame", "deep-nesting", "short-deep-nesting", "too-long", "not-an-object",
                                    "bool-frame"])
def test_damaged_metadata_is_a_one_line_error(tmp_path: Path, damage: str) -> None:
    data = save_cloak(a_cloak(), tmp_path / "me.cloak").read_bytes()
    text = header_of(data)["cloak"]
    meta = json.loads(text)
    damaged = {
        "huge-frame": text.replace('"frame": 16', '"frame": 1e999'),
        "deep-nesting": "[" * 100_000 + "]" * 100_000,
        "short-deep-nesting": "[" * 3_000 + "]" * 3_000,  # within the length bound, beyond Python's recursion limit
        "too-long": json.dumps({**meta, "info": {"photos": 3, "padding": "x" * 200_000}}),
        "not-an-object": "[1, 2, 3]",
        "bool-frame": json.dumps({**meta, "frame": True}),
    }[damage]
    assert damaged != text
    refused(tmp_path, f"{damage}.cloak", rewritten(data, damaged))
