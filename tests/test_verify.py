"""``guardkit verify``: what was attacked is checked and never assumed, and a match is a distance below the
threshold (the rule of dlib and of eval's asr). Real dlib on the shared photos; no model is mocked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardkit import Engine
from guardkit.cli import app
from guardkit.errors import ConfigError
from guardkit.verify import VerifyRow, verify

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
runner = CliRunner()


def test_a_match_is_a_distance_below_the_threshold() -> None:
    at = VerifyRow("dlib", "none", 0.6, 0.6, "euclidean")
    assert at.decision == "no match"  # dlib: same person when the distance is < 0.6
    assert VerifyRow("dlib", "none", 0.5999, 0.6, "euclidean").decision == "match"
    assert VerifyRow("dlib", "none", float("nan"), 0.6, "euclidean").decision == "no face found"


def test_an_unknown_attacked_model_is_a_one_line_error() -> None:
    """A typo would have made every model 'held out'; it is refused before any photo is read."""
    with pytest.raises(ConfigError, match="dlbi") as info:
        verify(Engine(), "missing.png", "missing-too.png", face_models=["dlib"], purify=["none"], crops=["own"],
               attacked=["dlbi"])
    message = str(info.value)
    assert "dlib" in message and "facenet" in message and "\n" not in message


@pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces")
def test_what_was_attacked_is_not_assumed() -> None:
    engine = Engine()
    photo, reference = FACES / "obama_small.jpg", FACES / "obama.jpg"
    kwargs = dict(face_models=["dlib"], purify=["none"], crops=["own"])
    unstated = verify(engine, photo, reference, **kwargs)
    assert [(r.attacked, r.role) for r in unstated] == [(None, "not stated")]
    assert unstated[0].decision == "match"  # the same person, unprotected
    assert [r.role for r in verify(engine, photo, reference, attacked=["dlib"], **kwargs)] == ["attacked"]
    assert [r.role for r in verify(engine, photo, reference, attacked=["facenet"], **kwargs)] == ["held out"]


@pytest.mark.skipif(not FACES.is_dir(), reason="needs ../shared/data/faces")
def test_the_cli_says_not_stated_and_refuses_a_typo() -> None:
    args = ["verify", str(FACES / "obama_small.jpg"), "-r", str(FACES / "obama.jpg"), "--fr", "dlib",
            "--purify", "none", "--crops", "own"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output  # the unprotected photo matches
    assert [row["attacked"] for row in json.loads(result.stdout)] == [None]
    table = runner.invoke(app, args)
    assert "not stated" in table.stdout
    typo = runner.invoke(app, [*args, "--attacked", "dlbi"])
    assert typo.exit_code == 2 and "dlbi" in typo.output and "Traceback" not in typo.output


def test_run_service_and_verify_share_one_match_rule_at_the_threshold():
    """A face exactly at a model's threshold is not a match (dlib: distance < 0.6 is the same person) wherever
    guardkit says so: `guardkit run`'s table and the service's answer said matched (<=), verify did not."""
    from types import SimpleNamespace

    from guardkit.cli.run import match_of
    from guardkit.serve.worker import Protected
    from guardkit.verify import is_match

    result = SimpleNamespace(thresholds={"dlib": 0.6}, threshold=0.6, face_model="dlib")
    photo = SimpleNamespace(distances={"dlib": 0.6}, fr_distance=0.6)
    answer = Protected(b"", "image/png", 1, 0.0, 40.0, {"dlib": 0.6, "facenet": 0.2}, {"dlib": 0.6, "facenet": 0.55},
                       "fr-cloak", 4 / 255, 60, 1.0)
    assert is_match(0.6, 0.6) is False
    assert match_of(result, photo, "dlib") == (0.6, False)
    assert answer.matches() == {"dlib": False, "facenet": True}
