"""``guardkit eval`` and ``guardkit verify`` end to end on real photos, the real dlib model and tiny
random-weight editors and encoders; resumes after interruption."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from guardkit.cli import app
from guardkit.prompts import PROMPT_SETS, prompt_group, resolve_prompts
from guardkit.specs import parse_spec
from guardkit.errors import ConfigError

runner = CliRunner()
FAST = ["--steps", "3", "-O", "eot_draws=1"]


@pytest.fixture
def photo_dir(tmp_path, faces_dir):
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(faces_dir / "obama_small.jpg", src / "obama_small.jpg")
    return src


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_eval_without_editor_scores_protection_and_purification_and_resumes(photo_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", str(photo_dir), "-o", str(out), "--methods", "none,fr-cloak", "--purify", "none,jpeg75",
            "--metrics", "psnr,fr-distance,asr", "--size", "128", *FAST, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "samples.csv")
    assert [(r["method"], r["purify"]) for r in rows] == [
        ("none", "none"), ("none", "jpeg75"), ("fr-cloak", "none"), ("fr-cloak", "jpeg75")]
    by = {(r["method"], r["purify"]): r for r in rows}
    assert float(by[("none", "none")]["fr-distance@dlib"]) == pytest.approx(0.0, abs=1e-6)
    assert float(by[("fr-cloak", "none")]["fr-distance@dlib"]) > float(by[("none", "jpeg75")]["fr-distance@dlib"])
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert {(s["method"], s["purify"]) for s in summary} == set(by)
    report = (out / "report.html").read_text()
    assert "<img" in report and "fr-distance@dlib" in report
    protected = out / "images" / "protected" / "fr-cloak" / "obama_small.png"
    mtime = protected.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(read_rows(out / "samples.csv")) == 4 and protected.stat().st_mtime_ns == mtime


def test_eval_with_a_tiny_ip2p_editor_and_paper_prompts(photo_dir, tmp_path):
    from test_ip2p import build_tiny_ip2p

    editor = build_tiny_ip2p(tmp_path / "ip2p")
    out = tmp_path / "eval"
    result = runner.invoke(app, [
        "eval", str(photo_dir), "-o", str(out), "--methods", "none,fr-cloak", "--editor", "ip2p",
        "--editor-path", str(editor), "--editor-option", "resolution=32", "--editor-option", "steps=2",
        "--prompts", "Let the person wear sunglasses|Let it be snowy", "--metrics", "psnr,ssim,fr",
        "--size", "64", "--seeds", "0,1", *FAST])
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "samples.csv")
    assert len(rows) == 2 * 2 * 2  # methods x prompts x seeds
    assert {r["group"] for r in rows} == {"accessory", "background"}
    clean = [r for r in rows if r["method"] == "none"]
    assert all(float(r["psnr"]) == float("inf") for r in clean)  # same seed, same photo: same edit
    assert (out / "images" / "edits" / "clean").is_dir()


def test_verify_says_match_for_the_clean_photo_and_no_match_for_the_protected(tmp_path, faces_dir):
    protected_dir = tmp_path / "protected"
    result = runner.invoke(app, ["run", str(faces_dir / "obama_small.jpg"), "-o", str(protected_dir)])
    assert result.exit_code == 0, result.output
    protected = protected_dir / "obama_small.protected.png"
    reference = str(faces_dir / "obama.jpg")
    verdict = runner.invoke(app, ["verify", str(protected), "-r", reference, "--fr", "dlib",
                                  "--purify", "none,jpeg75", "--json"])
    assert verdict.exit_code == 0, verdict.output
    rows = json.loads(verdict.stdout)
    assert [(r["purify"], r["decision"]) for r in rows] == [("none", "no match"), ("jpeg75", "no match")]
    clean = runner.invoke(app, ["verify", str(faces_dir / "obama_small.jpg"), "-r", reference, "--fr", "dlib",
                                "--purify", "none", "--json"])
    assert clean.exit_code == 1 and json.loads(clean.stdout)[0]["decision"] == "match"


def test_prompt_sets_and_specs():
    assert len(PROMPT_SETS["paper"]) == 25 and len(PROMPT_SETS["paper-background"]) == 7
    assert prompt_group("Add elf-like ears") == "facial" and prompt_group("paint it red") == "custom"
    assert resolve_prompts("a | b") == ["a", "b"]
    assert parse_spec("jpeg60") == ("jpeg", {"quality": 60})
    assert parse_spec("resize50") == ("resize", {"scale": 0.5})
    assert parse_spec("blur:kernel=5,sigma=1.5") == ("blur", {"kernel": 5, "sigma": 1.5})
    with pytest.raises(ConfigError):
        parse_spec("blur:sigma")


def test_eval_runs_flux_guard_and_reports_held_out_face_models(photo_dir, tmp_path):
    """Edit methods are evaluated too: the privacy-preserving edit against the ensemble (dlib), scored
    by the ensemble and by a face model held out of it (reported under its own label)."""
    from test_flux_edit import build_tiny_flux

    from guardkit.config import Budget, RunConfig
    from guardkit.engine import Engine
    from guardkit.evaluate import EvalConfig, evaluate
    from guardkit.testing import TinyFaceModelPlugin

    folder = tmp_path / "flux"
    build_tiny_flux(folder)
    engine = Engine(plugins=[TinyFaceModelPlugin()])
    config = EvalConfig(
        methods=["none", "flux-guard"], editor="flux-edit", prompts=["a photo of a man with glasses"],
        purify=["none", "jpeg75"], face_models=["dlib", "tiny"], ensemble=["dlib"], metrics=["fr-distance"],
        size=96, editor_options={"path": str(folder), "steps": 5, "max_sequence_length": 16, "feature_blocks_from": 0},
        method_options={"steps": 5, "adv_steps": 2, "blend_start": 1, "iterations": 2, "lpips_random": True},
    )
    result = evaluate(engine, [photo_dir], config, tmp_path / "eval", run=RunConfig(budget=Budget(steps=2)))
    labels = set(result.rows[0]) - {"photo", "method", "purify", "prompt", "seed", "group"}
    assert labels == {"fr-distance@dlib", "fr-distance@tiny (held-out)"}
    by = {(r["method"], r["purify"]): r for r in result.rows}
    assert set(by) == {("none", "none"), ("none", "jpeg75"), ("flux-guard", "none"), ("flux-guard", "jpeg75")}
    # the guarded edit is farther from the person (dlib: the ensemble) than the plain edit of the same seed
    assert by[("flux-guard", "none")]["fr-distance@dlib"] > by[("none", "none")]["fr-distance@dlib"]
    assert (tmp_path / "eval" / "images" / "guarded" / "flux-guard").is_dir()
