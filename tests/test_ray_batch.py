"""``guardkit run --ray`` and ``guardkit.ray_batch.protect`` on a local Ray (2 CPUs), real models (dlib)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ray  # the ray extra is part of .[test]: CI installs it
from guardkit.cli import app
from guardkit.config import RunConfig
from guardkit.errors import ConfigError

FAST = ["--fr", "dlib", "--steps", "2", "--seed", "0", "--threads", "2"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, faces_dir) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(faces_dir / "obama_small.jpg", folder / "a_obama.jpg")
    shutil.copy(faces_dir / "obama_small.jpg", folder / "b_obama.png.jpg")
    (folder / "c_broken.jpg").write_bytes(b"not a photo at all")
    return folder


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    """What plain ``guardkit run`` writes for the same seed."""
    out = tmp_path_factory.mktemp("reference")
    result = CliRunner().invoke(app, ["run", str(photos), "-o", str(out), *FAST])
    assert result.exit_code == 1, result.output  # the broken file fails, the others are written
    return out


def photos_in(folder: Path) -> list[str]:
    """The photos written into ``folder`` (``guardkit run`` also keeps its records there, in ``.guardkit``)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".guardkit")


def run_json(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["run", *args, *FAST, "--json"])
    assert "{" in result.stdout, result.output
    start = result.stdout.index("{")
    return result.exit_code, json.loads(result.stdout[start:])


def test_ray_run_gives_the_same_bytes_records_the_bad_file_and_resumes(local_ray, photos, reference, tmp_path):
    out = tmp_path / "out"
    code, report = run_json(str(photos), "-o", str(out), "--ray", "local")
    assert code == 1
    status = {Path(p["source"]).name: p["status"] for p in report["photos"]}
    assert status == {"a_obama.jpg": "protected", "b_obama.png.jpg": "protected", "c_broken.jpg": "failed"}
    broken = next(p for p in report["photos"] if p["status"] == "failed")
    assert "c_broken.jpg" in broken["error"] and "not a readable image" in broken["error"]
    assert report["face_models"] == ["dlib"] and all(
        p["distances"]["dlib"] > 0 for p in report["photos"] if p["status"] == "protected")
    written = photos_in(out)
    assert written == photos_in(reference) == ["a_obama.protected.png", "b_obama.png.protected.png"]
    for name in written:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs from guardkit run's"

    # A killed run leaves at most a half-written output (writes are atomic; simulate the worst): redone.
    half = out / "a_obama.protected.png"
    half.write_bytes(half.read_bytes()[:1000])
    kept = (out / "b_obama.png.protected.png").stat().st_mtime_ns
    code, report = run_json(str(photos), "-o", str(out), "--ray", "local")
    status = {Path(p["source"]).name: p["status"] for p in report["photos"]}
    assert status == {"a_obama.jpg": "protected", "b_obama.png.jpg": "skipped", "c_broken.jpg": "failed"}
    assert half.read_bytes() == (reference / half.name).read_bytes()
    assert (out / "b_obama.png.protected.png").stat().st_mtime_ns == kept
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temp file was left behind"


def test_python_api_reads_and_writes_fsspec_urls(local_ray, photos, reference, tmp_path):
    import guardkit.ray_batch

    from guardkit.engine import Engine

    source = f"file://{photos}/a_obama.jpg"
    target = f"file://{tmp_path}/url-out"
    run, options = Engine().resolve_strength("fr-cloak", RunConfig(seed=0, threads=2), None, None, steps=2,
                                             explicit_run=False)  # what `guardkit run --steps 2` runs
    result = guardkit.ray_batch.protect([source], target, face_model=["dlib"], run=run, options=options)
    (photo,) = result.photos
    assert photo.status == "protected", photo.error
    assert str(photo.output) == f"{target}/a_obama.protected.png"
    written = tmp_path / "url-out" / "a_obama.protected.png"
    assert written.read_bytes() == (reference / "a_obama.protected.png").read_bytes()
    again = guardkit.ray_batch.protect([source], target, face_model=["dlib"], run=RunConfig(seed=0))
    assert [p.status for p in again.photos] == ["skipped"]

    code, report = run_json(source, "-o", f"file://{tmp_path}/cli-out", "--ray", "local")  # the CLI keeps the `//`
    assert code == 0 and [p["output"] for p in report["photos"]] == [f"file://{tmp_path}/cli-out/a_obama.protected.png"]
    assert (tmp_path / "cli-out" / "a_obama.protected.png").read_bytes() == written.read_bytes()


def test_a_url_plan_never_overwrites_an_input_and_records_a_missing_one():
    import fsspec

    from guardkit.errors import ImageError
    from guardkit.ray_batch import plan

    fsspec.filesystem("memory").pipe({"/gk-plan/out/a.protected.png": b"an input", "/gk-plan/in/a.png": b"another"})
    with pytest.raises(ImageError, match="a.png: output memory://gk-plan/out/a.protected.png would overwrite the input"):
        plan(["memory://gk-plan/out/a.protected.png", "memory://gk-plan/in/a.png"], "memory://gk-plan/out", "png")
    bad: list = []
    items = plan(["memory://gk-plan/none.jpg", "memory://gk-plan/in/a.png"], "memory://gk-plan/out", "png", bad)
    assert [i.source for i in items] == ["memory://gk-plan/in/a.png"]
    assert [(str(path), message) for path, message in bad] == [
        ("memory://gk-plan/none.jpg", "memory://gk-plan/none.jpg: no such file or folder")]


def test_a_folder_given_as_the_address_is_a_clear_error():
    from guardkit.ray_batch import check_address

    assert check_address(None) is None and check_address("local") is None
    assert check_address("auto") == "auto" and check_address("10.0.0.5:6379") == "10.0.0.5:6379"
    assert check_address("ray://head:10001") == "ray://head:10001"
    with pytest.raises(ConfigError, match="--ray takes a cluster address"):
        check_address("photos/")


def test_resume_redoes_an_output_of_another_size(photos, reference, tmp_path):
    """As the shared photo loop's resume: an output that decodes but is not the size this run writes (an
    older run's at another resolution, another photo's under the same name) is not finished; local and URL."""
    from PIL import Image

    from guardkit.ray_batch import Item, is_finished, plan

    out = tmp_path / "out"
    out.mkdir()
    source = photos / "a_obama.jpg"
    (item,) = [i for i in plan([source], out, "png") if i.source == str(source)]
    output = Path(item.output)
    assert not is_finished(item)  # nothing there yet
    shutil.copy(reference / output.name, output)
    assert is_finished(item)  # what this run writes: skipped
    url_item = Item(f"file://{source}", f"file://{output}")
    assert is_finished(url_item)
    with Image.open(reference / output.name) as done:
        small = done.resize((done.width // 2, done.height // 2))
    small.save(output)  # decodes fine, but half the size
    assert not is_finished(item) and not is_finished(url_item)
    assert not is_finished(Item(str(photos / "c_broken.jpg"), str(output)))  # unreadable source: not finished


def test_a_cloak_runs_on_ray_as_here(local_ray, photos, tmp_path):
    import torch

    from guardkit.cloak import Cloak
    from guardkit.cloak_file import save_cloak

    bank = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 8 / 255
    cloak = save_cloak(Cloak(bank, eps=8 / 255, finder="mtcnn", face_models=("dlib",), psnr_floor=38.3),
                       tmp_path / "me.cloak")
    here, there = tmp_path / "here", tmp_path / "there"
    assert CliRunner().invoke(app, ["run", str(photos), "-o", str(here), "--cloak", str(cloak)]).exit_code == 1
    result = CliRunner().invoke(app, ["run", str(photos), "-o", str(there), "--cloak", str(cloak), "--ray", "local"])
    assert result.exit_code == 1, result.output  # the broken file fails on Ray too
    written = photos_in(there)
    assert written == photos_in(here) == ["a_obama.protected.png", "b_obama.png.protected.png"]
    for name in written:
        assert (there / name).read_bytes() == (here / name).read_bytes()
