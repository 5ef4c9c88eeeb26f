"""Review of ``guardkit edit`` (``guardkit.editing``): what resume records, the geometry of an editor with its
own resolution (``ip2p``), and the geometry of a user mask. On tiny random-weight FLUX and InstructPix2Pix
pipelines (saved and loaded back offline), the real dlib face model and finder, and a shared photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from guardkit.editing import edit_photos, load_mask, prepare
from guardkit.imageio import load_rgb

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from test_flux_edit import build_tiny_flux  # noqa: E402
from test_flux_guard import EDITOR_OPTIONS, GLASSES, SOURCE, make_engine  # noqa: E402
from test_ip2p import build_tiny_ip2p  # noqa: E402

RESOLUTION = 96  # obama_small (320x240) -> 96x72, centre-cropped to 96x64: 4 rows off the top and bottom
STEPS = 2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine():
    return make_engine()


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux") / "FLUX.1-dev"
    build_tiny_flux(folder)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory, faces_dir):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    Image.open(faces_dir / "obama_small.jpg").save(folder / "obama.jpg")
    return folder / "obama.jpg"


def test_resume_redoes_an_output_made_under_other_settings(engine, flux_folder, photo, tmp_path):
    """An output made under one prompt (or one editor setting) is not "already done" for another."""
    opts = {"path": str(flux_folder), **EDITOR_OPTIONS, "steps": STEPS}
    common = {"source_prompt": SOURCE, "resolution": RESOLUTION, "output_dir": tmp_path}
    first = edit_photos(engine, [photo], prompt=GLASSES, editor_options=opts, **common)
    assert first[0].status == "edited"
    pixels = load_rgb(first[0].output)
    same = edit_photos(engine, [photo], prompt=GLASSES, editor_options=opts, **common)
    assert same[0].status == "skipped"  # same photo, same settings: resumed
    other_prompt = edit_photos(engine, [photo], prompt="bald man", editor_options=opts,
                               **common)
    assert other_prompt[0].status == "edited"  # the old output was of another prompt
    assert not np.array_equal(load_rgb(other_prompt[0].output), pixels)
    other_guidance = edit_photos(engine, [photo], prompt=GLASSES, editor_options={**opts, "guidance": 1.0}, **common)
    assert other_guidance[0].status == "edited"
    other_source = edit_photos(engine, [photo], prompt=GLASSES, editor_options={**opts, "guidance": 1.0},
                                 source_prompt="a man", resolution=RESOLUTION, output_dir=tmp_path)
    assert other_source[0].status == "edited"  # another source prompt: another inversion


def test_ip2p_edit_of_a_non_square_photo_lands_on_its_centre_square(engine, tmp_path_factory, photo):
    """ip2p edits the photo's centre square; the edit must go back onto that square, not be stretched over the
    whole (non-square) photo, where the faces found on the photo would no longer be under it."""
    ip2p_dir = build_tiny_ip2p(tmp_path_factory.mktemp("ip2p") / "timbrooks" / "instruct-pix2pix")
    opts = {"path": str(ip2p_dir), "resolution": 32, "steps": STEPS}
    (result,) = edit_photos(engine, [photo], prompt="Let the person wear sunglasses", editor="ip2p",
                            resolution=RESOLUTION, editor_options=opts)
    assert result.status == "edited" and result.edited.shape == (64, 96, 3)
    source = prepare(load_rgb(photo), RESOLUTION)  # 64x96
    editor = engine.build_part("editor", "ip2p", None, **opts)
    x = torch.from_numpy(source).permute(2, 0, 1)[None].float() / 255
    square_edit = editor.edit(x, "Let the person wear sunglasses", seed=0)  # [1,3,32,32] of the centre 64x64
    out = torch.from_numpy(result.edited).permute(2, 0, 1)[None].float() / 255
    centre = out[..., :, 16:80]
    expected = F.interpolate(square_edit, size=(64, 64), mode="bilinear", align_corners=False)
    err = (centre - expected).abs().mean().item()
    stretched = F.interpolate(square_edit, size=(64, 96), mode="bilinear", align_corners=False)[..., :, 16:80]
    assert (stretched - expected).abs().mean().item() > 0.01  # the test can tell the two apart
    assert err < 1.0 / 255, f"centre of the edit is off its square by {err:.4f} on average"


def test_a_mask_drawn_on_the_original_photo_follows_the_photos_crop(photo, tmp_path):
    """The photo is resized then centre-cropped (fit_size); a mask at the original photo's size must follow the
    same geometry, not be stretched onto the cropped photo."""
    from PIL import Image

    h0, w0 = load_rgb(photo).shape[:2]  # 240x320
    mask = np.zeros((h0, w0, 3), np.uint8)
    mask[: h0 // 6] = 255  # a band at the top (partly cropped away)
    mask[h0 // 2:h0 // 2 + 20, w0 // 4:w0 // 2] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    expected = prepare(mask, RESOLUTION).astype(np.float32).mean(axis=2) / 255  # the photo's geometry
    height, width = expected.shape
    assert (height, width) == (64, 96)
    loaded = load_mask(path, width, height, RESOLUTION)
    assert loaded.shape == (height, width)
    assert np.abs(loaded - expected).max() < 0.25 and np.abs(loaded - expected).mean() < 0.01  # resampling only
    # a mask already at the edited size is used as it is
    Image.fromarray((expected * 255).round().astype(np.uint8)).save(tmp_path / "small.png")
    assert np.abs(load_mask(tmp_path / "small.png", width, height, RESOLUTION) - expected).max() < 1 / 255 + 1e-6


def test_flux_guard_gets_the_users_mask_on_the_photos_geometry(engine, flux_folder, photo, tmp_path):
    """End to end: ``guardkit edit --mask`` with a mask drawn on the original photo; the edit region flux-guard
    uses (its report's unblurred mask) is that mask put through the photo's resize and crop."""
    from PIL import Image

    h0, w0 = load_rgb(photo).shape[:2]
    mask = np.zeros((h0, w0, 3), np.uint8)
    mask[: h0 // 6] = 255
    mask[h0 // 2:h0 // 2 + 20, w0 // 4:w0 // 2] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    opts = {"steps": STEPS, "adversarial": False, "adv_steps": 0, "blend_start": 1, "mask_blur": 0.0}
    (result,) = edit_photos(engine, [photo], prompt=GLASSES, source_prompt=SOURCE, protect="flux-guard",
                            mask=tmp_path / "mask.png", resolution=RESOLUTION,
                            editor_options={"path": str(flux_folder), **EDITOR_OPTIONS}, protect_options=opts)
    assert result.status == "protected", result.error
    used = result.report.mask[0, 0].cpu().numpy()
    expected = prepare(mask, RESOLUTION).astype(np.float32).mean(axis=2) / 255
    assert used.shape == expected.shape == (64, 96)
    assert np.abs(used - expected).max() < 0.25 and np.abs(used - expected).mean() < 0.01
