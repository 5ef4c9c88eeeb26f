"""``guardkit enroll`` and ``guardkit run --cloak`` end to end on real photos (issue 14)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from guardkit import Engine
from guardkit.cli import app
from guardkit.cloak_file import load_cloak
from guardkit.imageio import load_rgb

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces")
runner = CliRunner()


@pytest.fixture(scope="module")
def cloak_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("enrol")
    bad = folder / "notes.jpg"
    bad.write_text("not a photo")
    out = folder / "me.cloak"
    result = runner.invoke(app, ["enroll", str(FACES / "obama_small.jpg"), str(FACES / "two_people.jpg"), str(bad),
                                 "-o", str(out), "--fr", "dlib", "--steps", "3", "--variants", "2", "--json"])
    assert result.exit_code == 1, result.output  # one photo could not be used; the others were
    report = json.loads(result.stdout)
    assert [Path(p).name for p in report["used"]] == ["obama_small.jpg", "two_people.jpg"]
    assert report["failed"][0]["photo"] == str(bad) and str(bad) in report["failed"][0]["error"]
    assert not (folder / ".me.cloak.partial").exists()  # the checkpoint goes once the cloak is written
    return out


def test_enrolled_cloak_file(cloak_file: Path) -> None:
    cloak = load_cloak(cloak_file)
    assert cloak.face_models == ("dlib",) and cloak.finder == "mtcnn" and cloak.variants == 2
    assert cloak.kind == "personal-cloak"  # the engine's DEFAULT_CLOAK_METHOD places it
    assert math.isclose(cloak.eps, 8 / 255) and cloak.psnr_floor == 38.3
    assert cloak.info["photos"] == 2 and cloak.info["strength"] == "mid"
    assert b"obama" not in cloak_file.read_bytes()  # no photo names


def test_run_with_cloak_places_it_within_budget(cloak_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(FACES / "obama2.jpg"), "-o", str(out), "--cloak", str(cloak_file), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "personal-cloak" and report["steps"] == 0
    photo = report["photos"][0]
    assert photo["status"] == "protected" and photo["faces"] == 1
    assert photo["distances"] == {}  # no face recognition model was needed to place it
    clean = load_rgb(FACES / "obama2.jpg").astype(np.int16)
    protected = load_rgb(Path(photo["output"])).astype(np.int16)
    assert 0 < np.abs(protected - clean).max() <= 8
    assert 10 * math.log10(255**2 / np.mean((protected - clean) ** 2)) >= 38.3


def test_cli_and_api_put_the_same_cloak(cloak_file: Path, tmp_path: Path) -> None:
    runner.invoke(app, ["run", str(FACES / "two_people.jpg"), "-o", str(tmp_path / "cli"), "--cloak", str(cloak_file),
                        "--face", "all"])
    Engine().protect([FACES / "two_people.jpg"], cloak=cloak_file, cloak_face="all", output_dir=tmp_path / "api")
    cli = load_rgb(tmp_path / "cli" / "two_people.protected.png")
    api = load_rgb(tmp_path / "api" / "two_people.protected.png")
    assert np.array_equal(cli, api)
    largest = Engine().protect([FACES / "two_people.jpg"], cloak=cloak_file).photos[0]
    assert "1 other face left as they were" in largest.note  # reported per photo
    one = largest.protected
    clean = load_rgb(FACES / "two_people.jpg")
    moved_all = np.argwhere(np.abs(cli.astype(np.int16) - clean).max(axis=2) > 0)
    moved_one = np.argwhere(np.abs(one.astype(np.int16) - clean).max(axis=2) > 0)
    assert moved_all[:, 1].max() > 700 and moved_all[:, 1].min() < 400  # both people
    assert moved_one[:, 1].max() - moved_one[:, 1].min() < 500  # one of them only


def test_refine_optimises_from_the_cloak(cloak_file: Path) -> None:
    engine = Engine()
    placed = engine.protect([FACES / "obama_small.jpg"], cloak=cloak_file).photos[0]
    refined = engine.protect([FACES / "obama_small.jpg"], cloak=cloak_file, refine=2).photos[0]
    assert placed.status == refined.status == "protected"
    assert "dlib" in refined.distances and refined.linf <= 8 / 255 + 1e-9
    assert not np.array_equal(placed.protected, refined.protected)


def test_bad_cloak_and_options_are_one_line_errors(cloak_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.cloak"
    broken.write_bytes(cloak_file.read_bytes()[:200])
    photo = tmp_path / "p.jpg"
    shutil.copy(FACES / "obama_small.jpg", photo)
    for args, words in (([str(photo), "-o", str(tmp_path / "o"), "--cloak", str(broken)], str(broken)),
                        ([str(photo), "-o", str(tmp_path / "o"), "--cloak", str(cloak_file), "--others", "maybe"], "--others"),
                        ([str(photo), "-o", str(tmp_path / "o"), "--cloak", str(cloak_file), "--face", "biggest"], "--face")):
        result = runner.invoke(app, ["run", *args])
        assert result.exit_code == 2, result.output
        assert words in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_strength_beside_a_cloak_does_not_stop_the_placing(cloak_file: Path) -> None:
    """The page and scripts send a strength with every photo; the cloak carries its own budget."""
    photo = Engine().protect([FACES / "obama_small.jpg"], cloak=cloak_file, strength="low").photos[0]
    assert photo.status == "protected", photo.error
    assert photo.linf > 4 / 255 + 1e-9  # the cloak's 8/255, not low's 4/255
