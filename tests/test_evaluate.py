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
FAST = ["--steps", "8", "-O", "eot_draws=1"]


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
    (protected,) = (out / "images" / "protected" / "fr-cloak").glob("obama_small.jpg_*.png")  # name + path hash
    mtime = protected.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(read_rows(out / "samples.csv")) == 4 and protected.stat().st_mtime_ns == mtime


def test_eval_names_a_missing_path_and_evaluates_the_others(photo_dir, tmp_path):
    """Issue 12 item 13: one missing input is named in one line, the others are evaluated, exit 1."""
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", str(tmp_path / "typo.jpg"), str(photo_dir), "-o", str(out), "--methods",
                                 "none", "--purify", "none", "--metrics", "psnr", "--size", "128", "--json"])
    assert result.exit_code == 1, result.output
    named = [line for line in result.stderr.splitlines() if "typo.jpg" in line]
    assert len(named) == 1 and "Traceback" not in result.output
    assert [r["method"] for r in read_rows(out / "samples.csv")] == ["none"]


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
    # mid against dlib alone, through dlib's own crop only (no template steps): a protection fitted to one crop
    result = runner.invoke(app, ["run", str(faces_dir / "obama_small.jpg"), "-o", str(protected_dir),
                                 "--strength", "mid", "--fr", "dlib", "-O", "template_every=0"])
    assert result.exit_code == 0, result.output
    protected = protected_dir / "obama_small.protected.png"
    reference = str(faces_dir / "obama.jpg")
    own = runner.invoke(app, ["verify", str(protected), "-r", reference, "--fr", "dlib",
                              "--purify", "none,jpeg75", "--crops", "own", "--json"])
    assert own.exit_code == 0, own.output
    rows = json.loads(own.stdout)
    assert [(r["crop"], r["purify"], r["decision"]) for r in rows] == [("own", "none", "no match"),
                                                                      ("own", "jpeg75", "no match")]
    # by default each model also reads the face as most services cut it: there this protection does not hold
    both = runner.invoke(app, ["verify", str(protected), "-r", reference, "--fr", "dlib", "--purify", "none", "--json"])
    assert both.exit_code == 1, both.output
    assert [(r["crop"], r["decision"]) for r in json.loads(both.stdout)] == [("own", "no match"), ("template", "match")]
    clean = runner.invoke(app, ["verify", str(faces_dir / "obama_small.jpg"), "-r", reference, "--fr", "dlib",
                                "--purify", "none", "--json"])
    assert clean.exit_code == 1 and [r["decision"] for r in json.loads(clean.stdout)] == ["match", "match"]
    bad = runner.invoke(app, ["verify", str(protected), "-r", reference, "--fr", "dlib", "--crops", "sideways"])
    assert bad.exit_code == 2 and "unknown crop sideways" in bad.output


def test_prompt_sets_and_specs():
    assert len(PROMPT_SETS["paper"]) == 25 and len(PROMPT_SETS["paper-background"]) == 7
    assert prompt_group("Add elf-like ears") == "facial" and prompt_group("paint it red") == "custom"
    assert resolve_prompts("a | b") == ["a", "b"]
    from guardkit.engine import Engine

    shorthands = Engine().registry.shorthands("purifier")  # each purifier declares its own
    assert parse_spec("jpeg60", shorthands=shorthands) == ("jpeg", {"quality": 60})
    assert parse_spec("resize50", shorthands=shorthands) == ("resize", {"scale": 0.5})
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
    labels = set(result.rows[0]) - {"photo", "method", "purify", "prompt", "seed", "group", "purify_seed"}
    assert labels == {"fr-distance@dlib", "fr-distance@tiny (held-out)"}
    by = {(r["method"], r["purify"]): r for r in result.rows}
    assert set(by) == {("none", "none"), ("none", "jpeg75"), ("flux-guard", "none"), ("flux-guard", "jpeg75")}
    # the guarded edit is farther from the person (dlib: the ensemble) than the plain edit of the same seed
    assert by[("flux-guard", "none")]["fr-distance@dlib"] > by[("none", "none")]["fr-distance@dlib"]
    assert (tmp_path / "eval" / "images" / "guarded" / "flux-guard").is_dir()


# ----------------------------------------------------------------------------- issue 12
PAPER_TAB_A3 = {  # FaceLock, Tab. A3, as the paper prints them
    "facial": ["Turn the person's hair pink", "Let the person turn bald", "Let the person have a tattoo",
               "Let the person wear purple makeup", "Let the person grow a mustache", "Turn the person into a zombie",
               "Change the skin color to Avatar blue", "Add elf-like ears", "Add large vampire fangs",
               "Apply Goth style makeup"],
    "accessory": ["Let the person wear a police suit", "Let the person wear a bowtie", "Let the person wear a helmet",
                  "Let the person wear sunglasses", "Let the person wear earrings", "Let the person smoke a cigar",
                  "Place a headband in the hair", "Place a tiara on the top of the head"],
    "background": ["Let it be snowy", "Change the background to a beach", "Add a city skyline background",
                   "Add a forest background", "Change the background to a desert", "Set the background in a library",
                   "Let the person stand under the moon"],
}


def test_paper_prompts_are_the_papers_text_and_paper_code_the_released_spelling():
    assert resolve_prompts("paper") == [p for group in PAPER_TAB_A3.values() for p in group]
    for group, prompts in PAPER_TAB_A3.items():
        assert resolve_prompts(f"paper-{group}") == prompts
    code = resolve_prompts("paper-code")  # the released utils.edit_prompts, typos kept
    assert len(code) == 25 and code[2] == "Let the person have a tatto" and code[4] == "Let the person grow a mustach"
    assert [c for c, p in zip(code, resolve_prompts("paper")) if c != p] == [code[2], code[4]]
    assert prompt_group("Let the person grow a mustach") == "facial"


def test_purifications_are_drawn_per_photo_and_seed(tmp_path, faces_dir):
    """Two photos get different rotation angles (and the seed each used is in samples.csv); rotate10
    turns by up to 10 degrees, not by one fixed tiny angle."""
    import torch

    from guardkit.config import RunConfig
    from guardkit.engine import Engine
    from guardkit.evaluate import EvalConfig, evaluate, purification_generator

    src = tmp_path / "photos"
    src.mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(faces_dir / "obama_small.jpg", src / name)
    engine = Engine()
    config = EvalConfig(methods=["none"], purify=["rotate10"], metrics=["psnr"], size=64, seeds=[0])
    result = evaluate(engine, [src], config, tmp_path / "eval", run=RunConfig(seed=0))
    rows = read_rows(tmp_path / "eval" / "samples.csv")
    assert len(rows) == 2 and rows[0]["purify_seed"] != rows[1]["purify_seed"]
    assert result.rows[0]["psnr"] != result.rows[1]["psnr"]  # same photo, different angles
    rotate = engine.load_purifier("rotate10", RunConfig())
    angles = torch.cat([rotate.angles(1, purification_generator(0, f"p{i}.jpg", s, "cpu"))
                        for i in range(30) for s in (0, 1)])
    assert angles.abs().max() <= 10 and angles.abs().max() > 8 and len(set(angles.tolist())) == 60


@pytest.mark.parametrize("adversarial", [False, True])
def test_flux_guard_is_scored_against_its_own_clean_trajectory(photo_dir, tmp_path, adversarial):
    """The clean baseline of an edit method is the same trajectory (steps, guidance, injection, blending)
    without the adversarial stage: with that stage off, the guarded edit IS the baseline (PSNR inf, FR
    distance equal); with it on, the guarded edit is farther from the person than its own baseline."""
    from test_flux_edit import build_tiny_flux

    from guardkit.config import Budget, RunConfig
    from guardkit.engine import Engine
    from guardkit.evaluate import EvalConfig, evaluate
    from guardkit.imageio import load_rgb

    folder = tmp_path / "flux"
    build_tiny_flux(folder)
    config = EvalConfig(
        methods=["flux-guard"], editor="flux-edit", prompts=["a photo of a man with glasses"], purify=["none"],
        face_models=["dlib"], ensemble=["dlib"], metrics=["psnr", "fr-distance"], size=96, face_parser="landmarks",
        editor_options={"path": str(folder), "steps": 5, "max_sequence_length": 16, "feature_blocks_from": 0},
        method_options={"steps": 5, "adv_steps": 2, "blend_start": 1, "iterations": 3, "lpips_random": True,
                        "adversarial": adversarial})
    out = tmp_path / "eval"
    result = evaluate(Engine(), [photo_dir], config, out, run=RunConfig(budget=Budget(steps=2)))
    (row,) = result.rows
    baseline = load_rgb(next((out / "images" / "guarded-clean" / "flux-guard").rglob("*.png")))
    plain = next((out / "images" / "edits" / "clean").rglob("*.png"), None)
    assert plain is None  # no plain flux-edit is made: it is not what the guarded edit is compared with
    if not adversarial:
        assert row["psnr"] == float("inf"), row
    else:
        import torch

        from guardkit.arrays import image_to_tensor
        from guardkit.types import EvalBatch

        assert row["psnr"] < float("inf")
        metric = Engine().build_part("metric", "fr-distance", RunConfig(), model="dlib")  # the engine hands it parts
        metric.load()
        source = image_to_tensor(load_rgb(next((out / "images" / "source").glob("*.png"))), "cpu")
        clean = image_to_tensor(baseline, "cpu")
        faces = Engine().load_part("face_finder", "dlib", RunConfig()).find(load_rgb(next((out / "images" / "source").glob("*.png"))))
        with torch.no_grad():
            base = float(metric.score(EvalBatch(source=source, protected=clean, edited=clean, edited_clean=clean,
                                                prompt="", faces=faces)).mean())
        assert row["fr-distance@dlib"] > base, (row, base)


def test_face_models_are_labelled_attacked_only_for_the_methods_that_attack_them():
    """A method that takes one face model attacks ``ensemble[0]`` only; an encoder attack attacks none; fr-cloak
    and edit methods attack every ensemble model. A column shared by their rows must say so (issue 12, item 7)."""
    from guardkit.engine import Engine
    from guardkit.evaluate import EvalConfig, attacked_models, held_out_note

    engine = Engine()
    config = EvalConfig(methods=["none", "fr-cloak", "facelock", "photoguard", "flux-guard"],
                        ensemble=["dlib", "facenet"])
    attacked = attacked_models(engine, config)
    assert attacked == {"none": [], "fr-cloak": ["dlib", "facenet"], "facelock": ["dlib"], "photoguard": [],
                        "flux-guard": ["dlib", "facenet"]}
    assert held_out_note("dlib", attacked) == " (held-out for photoguard)"
    assert held_out_note("facenet", attacked) == " (held-out for facelock, photoguard)"
    assert held_out_note("arcface", attacked) == " (held-out)"
    only_cloak = attacked_models(engine, EvalConfig(methods=["none", "fr-cloak"], ensemble=["dlib", "facenet"]))
    assert held_out_note("facenet", only_cloak) == "" and held_out_note("arcface", only_cloak) == " (held-out)"
    one = attacked_models(engine, EvalConfig(methods=["none", "facelock"], ensemble=["dlib", "facenet"]))
    assert held_out_note("facenet", one) == " (held-out)"  # labelled attacked before: facelock never saw it


def test_eval_scores_asr_at_false_accept_rates_and_says_how_fr_aligned(photo_dir, tmp_path):
    """asr at the model's own threshold, at each FAR where published (dlib has none: said, not invented),
    impersonation ASR with a target identity; summary.json and the report say how FR aligned the edits."""
    from guardkit.config import Budget, RunConfig
    from guardkit.engine import Engine
    from guardkit.evaluate import EvalConfig, evaluate
    from guardkit.testing import TinyFaceModelPlugin

    target = photo_dir.parent / "target.jpg"
    shutil.copy(photo_dir / "obama_small.jpg", target)  # the same person: impersonation of oneself succeeds
    config = EvalConfig(methods=["none"], face_models=["dlib"], metrics=["fr", "asr"], size=128,
                        target_identity=target)
    result = evaluate(Engine(plugins=[TinyFaceModelPlugin()]), [photo_dir], config, tmp_path / "eval",
                      run=RunConfig(budget=Budget(steps=1)))
    (row,) = result.rows
    assert float(row["asr@dlib"]) == 0.0 and float(row["asr-impersonation@dlib"]) == 1.0
    assert not any("FAR" in label for label in row)
    assert any("FAR" in k and "dlib" in k for k in result.unavailable)
    assert "no published FAR thresholds" in " ".join(result.unavailable.values())
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert "re-detected on the edit (dlib finder)" in saved["fr_alignment"]
    assert saved["target_identity"] == str(target) and saved["attacked"] == {"none": []}
    assert "FR alignment: fr@dlib: re-detected" in (tmp_path / "eval" / "report.html").read_text()
    evaluate(Engine(), [photo_dir], EvalConfig(methods=["none"], face_models=["dlib"], metrics=["fr"], size=128,
                                               fr_redetect=False), tmp_path / "eval2")
    assert "source's landmarks" in json.loads((tmp_path / "eval2" / "summary.json").read_text())["fr_alignment"]
