"""Purifiers: ``jpeg``, ``blur``, ``rotate``, ``resize``, ``color-jitter`` (plugins/purifiers/<name>.py,
registered by the ``purifiers`` plugin in basic.py) and ``diffpure`` (plugins/purifiers/diffpure.py) on a
tiny real ``UNet2DModel`` with seeded random weights, saved as a ``DDPMPipeline`` folder and loaded back
through the part's own loading code (nothing is downloaded)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.purifiers import basic, blur, color_jitter, diffpure, jpeg, resize, rotate
from guardkit.registry import Registry, make_plugin_manager
from guardkit.specs import Shorthand, parse_spec

BUILTIN_NAMES = ("jpeg", "blur", "rotate", "resize", "color-jitter", "diffpure")

BASIC = {
    "jpeg": jpeg.Jpeg,
    "blur": blur.Blur,
    "rotate": rotate.Rotate,
    "resize": resize.Resize,
    "color-jitter": color_jitter.ColorJitter,
}


def registry() -> Registry:
    pm, errors = make_plugin_manager(entry_points=False, plugins=[basic, diffpure])
    assert errors == []
    return Registry.from_plugin_manager(pm)


#: The number shorthands the purifiers declare (``jpeg75``), as the engine hands them to ``parse_spec``.
SHORTHANDS = registry().shorthands("purifier")
DIFFERENTIABLE = ["jpeg", "blur", "rotate", "resize", "color-jitter"]


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def photos(b: int = 2, h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random photos in [0, 1] (a blurred random field plus a gradient)."""
    g = gen(seed)
    noise = torch.rand(b, 3, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w)
    return (0.7 * x + 0.3 * ramp).clamp(0, 1)


def build(name: str, **options):
    part = BASIC[name](RunConfig(), **options)
    part.load()
    return part


# ----------------------------------------------------------------------------- all basic purifiers
@pytest.mark.parametrize("name", list(BASIC))
def test_shape_range_and_input_untouched(name):
    x = photos()
    before = x.clone()
    out = build(name).purify(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", list(BASIC))
def test_deterministic_for_a_seeded_generator(name):
    x = photos()
    part = build(name)
    assert torch.equal(part.purify(x, gen(3)), part.purify(x, gen(3)))


@pytest.mark.parametrize("name", ["rotate", "color-jitter"])
def test_random_ones_differ_across_seeds(name):
    x = photos()
    part = build(name)
    assert not torch.allclose(part.purify(x, gen(1)), part.purify(x, gen(2)))


def test_paper_parameters_are_the_defaults():
    assert jpeg.JpegConfig() == jpeg.JpegConfig(quality=75)
    assert blur.BlurConfig() == blur.BlurConfig(kernel=5, sigma=1.5)
    assert rotate.RotateConfig().degrees == 10 and rotate.RotateConfig().padding == "reflection"
    assert resize.ResizeConfig().scale == 0.5
    assert dataclasses.astuple(color_jitter.ColorJitterConfig()) == (0.2, 0.2, 0.2, 0.0)
    assert diffpure.DiffPureConfig().t == 0.1 and diffpure.DiffPureConfig().sampler == "ddpm"
    for cfg in (jpeg.JpegConfig(), blur.BlurConfig(), rotate.RotateConfig(), resize.ResizeConfig(),
                color_jitter.ColorJitterConfig(), diffpure.DiffPureConfig()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.__setattr__(dataclasses.fields(cfg)[0].name, 1)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_differentiable_ones_give_finite_nonzero_gradients(name):
    part = build(name, hue=0.1) if name == "color-jitter" else build(name)
    assert part.differentiable is True
    x = photos().requires_grad_(True)
    weights = torch.rand(x.shape, generator=gen(9))
    (part.purify(x, gen()) * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name, options", [
    ("jpeg", {"quality": 0}), ("jpeg", {"quality": 75.5}), ("blur", {"kernel": 4}), ("blur", {"sigma": 0}),
    ("rotate", {"degrees": -1}), ("rotate", {"padding": "wrap"}), ("resize", {"scale": 0}),
    ("color-jitter", {"hue": 0.6}), ("color-jitter", {"brightness": -0.1}), ("jpeg", {"qualty": 60}),
])
def test_bad_options_are_one_line_config_errors(name, options):
    with pytest.raises(ConfigError) as info:
        BASIC[name](RunConfig(), **options)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- per purifier
def test_jpeg_compresses_and_higher_quality_is_closer():
    x = photos(seed=1) * 0.8 + 0.1 * torch.rand(2, 3, 32, 40, generator=gen(5))  # some high frequencies
    err = {q: (build("jpeg", quality=q).purify(x, gen()) - x).abs().mean().item() for q in (60, 90)}
    assert err[60] > 1e-3 and err[90] > 0
    assert err[90] < err[60]
    assert torch.equal(build("jpeg").purify(x, gen()), jpeg.jpeg_bpda(x, 75))


def test_blur_kernel_sums_to_one_and_flat_stays_flat():
    part = build("blur")
    k = part.kernel1d(photos())
    assert k.numel() == 5 and torch.isclose(k.sum(), torch.tensor(1.0))
    assert torch.allclose(k, k.flip(0)) and k.argmax() == 2
    flat = torch.full((1, 3, 16, 20), 0.37)
    assert torch.allclose(part.purify(flat, gen()), flat, atol=1e-6)
    x = photos()
    out = part.purify(x, gen())
    assert (out - x).abs().mean() > 1e-3  # it does blur
    assert out[..., 1:, :].sub(out[..., :-1, :]).abs().mean() < x[..., 1:, :].sub(x[..., :-1, :]).abs().mean()


def test_rotate_zero_degrees_is_identity():
    x = photos()
    assert torch.allclose(build("rotate", degrees=0).purify(x, gen()), x, atol=1e-5)


@pytest.mark.parametrize("padding", rotate.PADDINGS)
def test_rotate_keeps_a_constant_image_interior(padding):
    flat = torch.full((2, 3, 32, 40), 0.6)
    out = build("rotate", degrees=10, padding=padding).purify(flat, gen())
    assert torch.allclose(out[..., 8:-8, 8:-8], flat[..., 8:-8, 8:-8], atol=1e-5)
    if padding != "zeros":  # reflection and edge fill bring in no black corners
        assert torch.allclose(out, flat, atol=1e-5)


def test_rotate_angles_are_within_range_and_turn_counter_clockwise():
    part = build("rotate", degrees=10)
    angles = part.angles(1000, gen())
    assert angles.abs().max() < 10 and angles.min() < -8 and angles.max() > 8
    x = torch.zeros(1, 3, 33, 33)
    x[..., 16, 24] = 1  # a dot right of the centre moves up under a counter-clockwise turn
    out = rotate.rotate(x, torch.tensor([90.0]), "zeros")
    y, xx = divmod(int(out[0, 0].argmax()), 33)
    assert (y, xx) == (8, 16)


def test_resize_scale_one_is_identity_and_half_loses_detail():
    x = photos()
    assert torch.equal(build("resize", scale=1.0).purify(x, gen()), x)
    out = build("resize").purify(x, gen())
    assert (out - x).abs().mean() > 1e-3


def test_color_jitter_zero_strengths_is_identity():
    x = photos()
    out = build("color-jitter", brightness=0, contrast=0, saturation=0, hue=0).purify(x, gen())
    assert torch.equal(out, x)


def test_color_jitter_matches_torchvision_formulas():
    x = photos(b=1)[0]
    gray = 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    cj = color_jitter
    assert torch.allclose(cj.adjust_brightness(x, 1.1), (x * 1.1).clamp(0, 1))
    assert torch.allclose(cj.adjust_contrast(x, 0.8), (0.8 * x + 0.2 * gray.mean()).clamp(0, 1))
    assert torch.allclose(cj.adjust_saturation(x, 0.0), gray.expand(3, -1, -1), atol=1e-6)
    assert torch.allclose(cj.adjust_hue(x, 0.0), x, atol=1e-5)
    assert torch.allclose(cj.adjust_hue(cj.adjust_hue(x, 0.2), -0.2), x, atol=1e-4)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert torch.allclose(cj.adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1), atol=1e-5)


def test_color_jitter_factors_follow_the_strengths():
    part = build("color-jitter", brightness=0.2, contrast=0.5, saturation=0.1, hue=0.05)
    g = gen()
    for _ in range(50):
        order, b, c, s, h = part.draw(g)
        assert sorted(order) == [0, 1, 2, 3]
        assert 0.8 <= b <= 1.2 and 0.5 <= c <= 1.5 and 0.9 <= s <= 1.1 and -0.05 <= h <= 0.05


# ----------------------------------------------------------------------------- parse_purifier
@pytest.mark.parametrize("spec, expected", [
    ("none", ("none", {})),
    ("jpeg75", ("jpeg", {"quality": 75})),
    ("jpeg60", ("jpeg", {"quality": 60})),
    ("jpeg", ("jpeg", {})),
    ("blur", ("blur", {})),
    ("rotate10", ("rotate", {"degrees": 10})),
    ("blur15", ("blur", {"sigma": 1.5})),
    ("diffpure10", ("diffpure", {"t": 0.1})),
    ("resize50", ("resize", {"scale": 0.5})),
    ("color-jitter", ("color-jitter", {})),
    ("diffpure", ("diffpure", {})),
    (" jpeg:quality=60 ", ("jpeg", {"quality": 60})),
    ("blur:kernel=7,sigma=2.5", ("blur", {"kernel": 7, "sigma": 2.5})),
    ("rotate:padding=zeros", ("rotate", {"padding": "zeros"})),
    ("diffpure:t=0.2,steps=none,sampler=ddim", ("diffpure", {"t": 0.2, "steps": None, "sampler": "ddim"})),
])
def test_parse_purifier(spec, expected):
    assert parse_spec(spec, BUILTIN_NAMES, shorthands=SHORTHANDS) == expected


@pytest.mark.parametrize("spec", [
    "", "JPEG75", "jpeg 75", "jpeg75.5", "rotate7.5", "color-jitter5", "jpeg:", "jpeg:quality", "jpeg:quality=",
    "jpeg:=60",
    "jpeg:quality=60,quality=70", ":quality=60", "none:x=1", "jpeg:Quality=60",
])
def test_parse_purifier_errors_are_one_line(spec):
    with pytest.raises(ConfigError) as info:
        parse_spec(spec, BUILTIN_NAMES, shorthands=SHORTHANDS)
    assert "\n" not in str(info.value)


def test_parsed_shorthands_build_parts():
    for spec in ("jpeg90", "rotate10", "resize50", "blur:kernel=3,sigma=1", "color-jitter:hue=0.1"):
        name, options = parse_spec(spec, BUILTIN_NAMES, shorthands=SHORTHANDS)
        BASIC[name](RunConfig(), **options)


# ----------------------------------------------------------------------------- registration
def test_every_name_is_registered_with_capabilities():
    parts = registry()
    assert sorted(parts.names("purifier")) == sorted([*BASIC, "diffpure"])
    for name, cls in BASIC.items():
        spec = parts.get("purifier", name)
        assert spec.factory is cls and spec.capabilities["differentiable"] is True
    assert parts.get("purifier", "diffpure").capabilities["differentiable"] is False
    assert [w.name for w in parts.get("purifier", "diffpure").weights] == [diffpure.DiffPure.HUB_ID]


def test_each_purifier_declares_its_own_shorthand():
    """The shorthands live on the parts (core names none): jpeg75, blur15, rotate10, resize50, diffpure10."""
    assert SHORTHANDS == {"jpeg": Shorthand("quality"), "blur": Shorthand("sigma", 10),
                          "rotate": Shorthand("degrees"), "resize": Shorthand("scale", 100),
                          "diffpure": Shorthand("t", 100)}
    assert parse_spec("jpeg75") == ("jpeg75", {})  # without the parts' shorthands: just a name
    with pytest.raises(ConfigError, match="color-jitter has no number shorthand"):
        parse_spec("color-jitter5", BUILTIN_NAMES, shorthands=SHORTHANDS)


def test_a_bad_shorthand_fails_only_its_plugin():
    from guardkit import hookimpl

    class Odd(jpeg.Jpeg):
        shorthand = ("quality", 0)  # a zero divisor

    class Plugin:
        @hookimpl
        def guardkit_register_purifiers(self, register):
            register("odd", Odd)

    pm, _ = make_plugin_manager(entry_points=False, plugins=[basic, Plugin()])
    errors = []
    parts = Registry.from_plugin_manager(pm, errors)
    assert "odd" not in parts.names("purifier") and "jpeg" in parts.names("purifier")
    assert len(errors) == 1 and "divisor > 0" in str(errors[0]) and "\n" not in str(errors[0])


def test_the_engine_reads_shorthands_from_the_registry():
    from guardkit.engine import Engine

    engine = Engine(entry_points=False, plugins=[basic])
    part = engine.load_purifier("resize25", RunConfig())
    assert isinstance(part, resize.Resize) and part.config.scale == 0.25
    assert engine.load_purifier("none", RunConfig()) is None


# ----------------------------------------------------------------------------- diffpure
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory):
    """A ``DDPMPipeline`` folder holding a tiny random ``UNet2DModel`` (32 px) and a 100-step scheduler."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100)
    folder = tmp_path_factory.mktemp("ddpm") / "google" / "ddpm-celebahq-256"
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder, unet, scheduler


def make_diffpure(folder, **options):
    part = diffpure.DiffPure(RunConfig(), path=str(folder), **options)
    part.load()
    return part


def test_diffpure_shape_range_and_determinism(tiny_ddpm):
    folder, _, _ = tiny_ddpm
    part = make_diffpure(folder)
    x = photos(b=2, h=24, w=40)  # not the model's size: resized to 32x32 and back
    out = part.purify(x, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(out, part.purify(x, gen(1)))
    assert not torch.equal(out, part.purify(x, gen(2)))
    assert part.timesteps() == list(range(9, -1, -1))  # t=0.1 of 100 steps
    assert diffpure.DiffPure.differentiable is False


def test_diffpure_larger_t_goes_further(tiny_ddpm):
    folder, _, _ = tiny_ddpm
    x = photos(b=2, h=32, w=32)
    dist = {}
    for t in (0.05, 0.6):
        part = make_diffpure(folder, t=t, steps=5)
        dist[t] = sum((part.purify(x, gen(s)) - x).abs().mean().item() for s in range(3)) / 3
    assert dist[0.05] < dist[0.6]


def test_diffpure_ddpm_matches_the_diffusers_scheduler(tiny_ddpm):
    """Our strided DDPM reverse steps are diffusers' ``DDPMScheduler.step`` on the same trajectory."""
    folder, unet, _ = tiny_ddpm
    part = make_diffpure(folder, t=0.3, steps=4)
    trajectory = part.timesteps()
    assert trajectory[0] == 29 and trajectory[-1] == 0 and len(trajectory) == 4
    x = photos(b=1, h=32, w=32)
    ours = part.purify(x, gen(4))

    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(timesteps=trajectory)
    g = gen(4)
    noise = torch.randn(x.shape, generator=g)
    sample = scheduler.add_noise(x * 2 - 1, noise, torch.tensor([trajectory[0]]))
    with torch.no_grad():
        for t in scheduler.timesteps:
            sample = scheduler.step(unet(sample, t).sample, t, sample, generator=g).prev_sample
    theirs = ((sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_diffpure_ddim_is_deterministic_after_the_forward_noise(tiny_ddpm):
    folder, _, _ = tiny_ddpm
    part = make_diffpure(folder, sampler="ddim", steps=3)
    x = photos(b=1, h=32, w=32)
    out = part.purify(x, gen(0))
    assert out.shape == x.shape and torch.equal(out, part.purify(x, gen(0)))


def test_diffpure_finds_weights_under_weights_dir(tiny_ddpm):
    folder, _, _ = tiny_ddpm
    part = diffpure.DiffPure(RunConfig(weights_dir=folder.parents[1]))
    part.load()
    assert part.unet is not None and part.timesteps()[0] == 9


def test_diffpure_missing_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parts = (diffpure.DiffPure(RunConfig(weights_dir=tmp_path)), diffpure.DiffPure(RunConfig(), path=str(tmp_path)))
    for part in parts:
        with pytest.raises(WeightsError) as info:
            part.load()
        message = str(info.value)
        assert "\n" not in message and "hf download google/ddpm-celebahq-256" in message


@pytest.mark.parametrize("options", [{"t": 0}, {"t": 1.5}, {"steps": 0}, {"sampler": "euler"}, {"tt": 0.1}])
def test_diffpure_bad_options(options):
    with pytest.raises(ConfigError):
        diffpure.DiffPure(RunConfig(), **options)
