"""``guardkit eval`` review fixes, on real photos and real (dlib, FaceNet) models: photos of one name kept
apart, resume refused under another configuration, infinities counted, each ensemble member reading its own
finder's faces, a failed photo's rows left out and the failed inputs listed."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from guardkit import hookimpl
from guardkit.cli import app
from guardkit.config import RunConfig
from guardkit.engine import Engine
from guardkit.errors import ConfigError
from guardkit.eval_report import summarise, write_report
from guardkit.evaluate import EvalConfig, evaluate
from guardkit.image_read import load_rgb
from guardkit.image_save import save_image

runner = CliRunner()
FAST = {"steps": 2, "method_options": {"eot_draws": 1}}


def psnr_of(result) -> dict[str, float]:
    return {r["photo"]: r["protected-psnr"] for r in result.rows}


def test_photos_of_one_name_or_one_stem_are_kept_apart(tmp_path, faces_dir):
    """a/p.jpg and b/p.jpg are two rows; c/q.png is scored on its own pixels, not on c/q.jpg's."""
    for folder, name, source in (("a", "p.jpg", "obama_small.jpg"), ("b", "p.jpg", "obama2.jpg"),
                                 ("c", "q.jpg", "obama_small.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(faces_dir / source, tmp_path / folder / name)
    save_image(load_rgb(faces_dir / "obama2.jpg"), tmp_path / "c" / "q.png")
    engine = Engine()
    config = EvalConfig(methods=["none"], purify=["jpeg75"], metrics=["protected-psnr"], size=64, fars=[])
    both = evaluate(engine, [tmp_path / "a", tmp_path / "b"], config, tmp_path / "out_ab")
    assert not both.failed and len(both.rows) == 2 and len(set(psnr_of(both))) == 2
    assert len(set(psnr_of(both).values())) == 2  # two photos, two scores
    assert all(r["photo"].startswith("p.jpg") for r in both.rows)  # the name stays readable
    pair = evaluate(engine, [tmp_path / "c"], config, tmp_path / "out_c")
    alone = evaluate(engine, [tmp_path / "c" / "q.png"], config, tmp_path / "out_png")
    (png_alone,) = psnr_of(alone).values()
    png_in_pair = [v for k, v in psnr_of(pair).items() if k.startswith("q.png")]
    assert png_in_pair == [pytest.approx(png_alone)]


def test_resume_refuses_another_configuration_and_summarises_only_the_inputs(tmp_path, faces_dir):
    """Another eps into the same folder is refused (naming the folder and -o); restart=True starts it over and
    matches a fresh folder; the grid may grow; a photo no longer among the inputs leaves the summary."""
    for name in ("one.jpg", "two.jpg"):
        shutil.copy(faces_dir / "obama_small.jpg", tmp_path / name)
    engine = Engine()

    def config(eps: float, methods=("fr-cloak",)) -> EvalConfig:
        return EvalConfig(methods=list(methods), purify=["none"], metrics=["protected-psnr"], size=64, fars=[],
                          eps=eps, **FAST)

    out = tmp_path / "out"
    low = evaluate(engine, [tmp_path / "one.jpg"], config(2 / 255), out)
    with pytest.raises(ConfigError) as refused:
        evaluate(engine, [tmp_path / "one.jpg"], config(16 / 255), out)
    message = str(refused.value)
    assert str(out) in message and "-o" in message and "eps" in message and "\n" not in message
    high = evaluate(engine, [tmp_path / "one.jpg"], config(16 / 255), out, restart=True)
    fresh = evaluate(engine, [tmp_path / "one.jpg"], config(16 / 255), tmp_path / "fresh")
    assert high.summary[0]["protected-psnr"]["mean"] == pytest.approx(fresh.summary[0]["protected-psnr"]["mean"])
    assert high.summary[0]["protected-psnr"]["mean"] < low.summary[0]["protected-psnr"]["mean"]
    grown = evaluate(engine, [tmp_path / "one.jpg", tmp_path / "two.jpg"], config(16 / 255, ("none", "fr-cloak")),
                     out)  # more methods and photos, the same settings: resumed
    assert {(s["method"], s["n"]) for s in grown.summary} == {("none", 2), ("fr-cloak", 2)}
    fewer = evaluate(engine, [tmp_path / "two.jpg"], config(16 / 255, ("fr-cloak",)), out)
    assert [(s["method"], s["n"]) for s in fewer.summary] == [("fr-cloak", 1)]
    assert {r["photo"][:7] for r in fewer.rows} == {"two.jpg"}


def test_cli_eval_names_the_folder_on_another_eps_and_restart_starts_over(tmp_path, faces_dir):
    shutil.copy(faces_dir / "obama_small.jpg", tmp_path / "p.jpg")
    out = tmp_path / "out"
    args = ["eval", str(tmp_path / "p.jpg"), "-o", str(out), "--methods", "fr-cloak", "--metrics", "protected-psnr",
            "--size", "64", "--far", "none", "--steps", "2", "-O", "eot_draws=1", "--json"]
    assert runner.invoke(app, [*args, "--eps", "2/255"]).exit_code == 0
    refused = runner.invoke(app, [*args, "--eps", "16/255"])
    assert refused.exit_code == 2 and "--restart" in refused.stderr and "Traceback" not in refused.output
    again = runner.invoke(app, [*args, "--eps", "16/255", "--restart"])
    assert again.exit_code == 0, again.output


def test_summary_counts_infinities_and_the_tables_show_each_metrics_n(tmp_path):
    rows = [{"method": "m", "purify": "none", "psnr": 30.0, "ssim": 0.9},
            {"method": "m", "purify": "none", "psnr": math.inf, "ssim": math.nan},
            {"method": "m", "purify": "none", "psnr": math.inf, "ssim": 0.7}]
    (entry,) = summarise(rows, ["psnr", "ssim"])
    assert entry["n"] == 3
    assert entry["psnr"]["mean"] == math.inf and entry["psnr"]["n"] == 3 and entry["psnr"]["n_inf"] == 2
    assert entry["ssim"]["mean"] == pytest.approx(0.8) and entry["ssim"]["n"] == 2 and entry["ssim"]["n_inf"] == 0
    from guardkit.eval_report import stat_text

    assert stat_text(entry["psnr"], entry["n"]) == "inf (2 of 3 inf)"
    assert stat_text(entry["ssim"], entry["n"]) == "0.800 ± 0.100 (n=2)"
    page = write_report(tmp_path, [entry], ["psnr", "ssim"], EvalConfig()).read_text()
    assert "inf (2 of 3 inf)" in page and "(n=2)" in page


@pytest.mark.parametrize("ensemble", [["dlib", "facenet"], ["facenet", "dlib"]])
def test_an_ensemble_with_facenet_protects_each_member_through_its_own_finder(tmp_path, faces_dir, ensemble):
    """FaceNet reads MTCNN faces, dlib its own: every member gets its finder's faces, as `guardkit run`."""
    shutil.copy(faces_dir / "obama_small.jpg", tmp_path / "p.jpg")
    config = EvalConfig(methods=["fr-cloak"], purify=["none"], metrics=["protected-psnr"], size=128, fars=[],
                        ensemble=ensemble, face_models=["dlib"], steps=1, method_options={"eot_draws": 1})
    result = evaluate(Engine(), [tmp_path / "p.jpg"], config, tmp_path / "out")
    assert result.failed == [] and len(result.rows) == 1
    assert math.isfinite(result.rows[0]["protected-psnr"])  # protected: the photo changed


class RefusesBrightPhotos:
    """A purifier that fails on a photo brighter than ``above`` (a real purifier failing on one photo)."""

    name = "refuses-bright"

    def __init__(self, run: RunConfig | None = None, above: float = 0.5) -> None:
        self.above = above

    def load(self) -> None:
        pass

    def purify(self, images, generator=None):
        if float(images.mean()) > self.above:
            raise ValueError(f"refuses a photo brighter than {self.above}")
        return images


class RefusingPlugin:
    @hookimpl
    def guardkit_register_purifiers(self, register):
        register("refuses-bright", RefusesBrightPhotos, summary="test purifier: fails on bright photos")


def test_a_photo_whose_later_sample_fails_leaves_no_row_and_is_listed(tmp_path, faces_dir):
    """obama_small (bright) passes 'none' and fails 'refuses-bright'; obama2 (darker) passes both: only obama2's
    rows are written and summarised, and summary.json and report.html list the failed photo."""
    shutil.copy(faces_dir / "obama_small.jpg", tmp_path / "bright.jpg")
    shutil.copy(faces_dir / "obama2.jpg", tmp_path / "dark.jpg")
    config = EvalConfig(methods=["none"], purify=["none", "refuses-bright:above=0.42"], metrics=["psnr"], size=64,
                        fars=[])
    out = tmp_path / "out"
    result = evaluate(Engine(plugins=[RefusingPlugin()]), [tmp_path], config, out)
    assert len(result.failed) == 1 and "bright.jpg" in result.failed[0]
    assert {r["photo"][:8] for r in result.rows} == {"dark.jpg"}
    assert {r["photo"][:8] for r in csv_rows(out / "samples.csv")} == {"dark.jpg"}
    assert [s["n"] for s in result.summary] == [1, 1]
    saved = json.loads((out / "summary.json").read_text())
    assert len(saved["failed"]) == 1 and "bright.jpg" in saved["failed"][0]
    assert "bright.jpg" in (out / "report.html").read_text()


def csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
