"""The LPIPS module and the LPIPS / latent losses, on a tiny real diffusers VAE (seeded random weights).

LPIPS backbones are random here (no download is possible); the linear heads are read from files that
the tests write in the real ``lpips`` key format.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.losses import latent as latent_mod
from guardkit.plugins.losses import lpips as lpips_mod
from guardkit.plugins.losses.latent import DecoderTarget, LatentL2, LatentNorm, TargetLatent
from guardkit import lpips as lpips_core
from guardkit.lpips import HEAD_KEYS, LPIPS
from guardkit.plugins.losses.lpips import LpipsLoss, LpipsPixelLoss
from guardkit.registry import Registry, make_plugin_manager
from guardkit.view import View

SCALING = 0.18215
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


class TinyVAE:
    """A diffusers ``AutoencoderKL`` with a tiny config and seeded weights, behind guardkit's Encoder API."""

    differentiable: ClassVar[bool] = True
    latent_channels: ClassVar[int] = 4
    downsample: ClassVar[int] = 8

    def __init__(self) -> None:
        diffusers = pytest.importorskip("diffusers")
        torch.manual_seed(0)
        self.vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
            sample_size=32,
        ).eval().requires_grad_(False)

    def load(self) -> None:
        pass

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean * SCALING

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / SCALING).sample


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae() -> TinyVAE:
    return TinyVAE()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    base = torch.rand(3, 3, 8, 8, generator=g)  # smooth-ish photos: upsampled blocks plus grain
    up = torch.nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False)
    return (up + 0.05 * torch.randn(3, 3, 32, 32, generator=g)).clamp(0, 1)


def perturbed(clean: torch.Tensor, eps: float = 8 / 255, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(clean.shape, generator=g) * 2 - 1) * eps
    return (clean + noise).clamp(0, 1).requires_grad_(True)


def write_heads(path, net: str, seed: int = 3) -> dict[str, torch.Tensor]:
    """A heads file in the real lpips format (``lin{i}.model.1.weight``, [1,C,1,1], non-negative)."""
    g = torch.Generator().manual_seed(seed)
    state = {key: torch.rand(1, c, 1, 1, generator=g) * 0.1 for key, c in zip(HEAD_KEYS, CHANNELS[net])}
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def heads_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads")
    return {net: (folder / f"{net}.pth", write_heads(folder / f"{net}.pth", net)) for net in CHANNELS}


@pytest.fixture(scope="module")
def alex(heads_files) -> LPIPS:
    return LPIPS("alex", random_backbone=True, heads_path=heads_files["alex"][0])


# -- registration ------------------------------------------------------------------------------

def test_losses_register_through_a_fresh_plugin_manager():
    pm, errors = make_plugin_manager(entry_points=False, plugins=[lpips_mod, latent_mod])
    registry = Registry.from_plugin_manager(pm)
    assert errors == []
    expected = {
        "lpips": (LpipsLoss, True, ["encoder"]),
        "lpips-pixel": (LpipsPixelLoss, False, []),
        "latent-l2": (LatentL2, True, ["encoder"]),
        "latent-norm": (LatentNorm, True, ["encoder"]),
        "target-latent": (TargetLatent, False, ["encoder"]),
        "decoder-target": (DecoderTarget, False, ["encoder"]),
    }
    assert set(registry.names("loss")) == set(expected)
    for name, (factory, maximize, needs) in expected.items():
        spec = registry.get("loss", name)
        assert spec.factory is factory and spec.summary
        assert spec.capabilities["maximize"] is maximize and spec.capabilities["needs"] == needs


# -- latent losses -------------------------------------------------------------------------------

def test_latent_losses_are_zero_at_their_optimum_and_shaped_b(vae, images):
    clean = images
    view = View(clean, clean.clone(), encoder=vae)
    assert LatentL2()(view).shape == (3,)
    assert torch.allclose(LatentL2()(view), torch.zeros(3), atol=1e-10)
    with torch.no_grad():
        z = vae.encode(clean * 2 - 1)
        decoded = (vae.decode(z) + 1) / 2  # the VAE attack reads the unclamped decode
    view = View(clean, clean.clone(), encoder=vae, target_latent=z, target_image=decoded)
    assert torch.allclose(TargetLatent()(view), torch.zeros(3), atol=1e-10)
    assert torch.allclose(DecoderTarget()(view), torch.zeros(3), atol=1e-10)


def test_target_losses_need_their_target(vae, images):
    view = View(images, images.clone(), encoder=vae)
    with pytest.raises(ValueError, match="target latent"):
        TargetLatent()(view)
    with pytest.raises(ValueError, match="target image"):
        DecoderTarget()(view)


def test_a_single_or_resized_target_serves_the_whole_batch(vae, images):
    grey = torch.full((1, 3, 32, 32), 0.5)
    with torch.no_grad():
        z_grey = vae.encode(grey * 2 - 1)
    view = View(images, images.clone(), encoder=vae, target_latent=z_grey, target_image=grey)
    one = TargetLatent()(view)
    full = TargetLatent()(View(images, images.clone(), encoder=vae, target_latent=z_grey.expand(3, -1, -1, -1)))
    assert one.shape == (3,) and torch.allclose(one, full) and bool((one > 0).all())
    big_grey = torch.full((1, 3, 64, 64), 0.5)
    small = DecoderTarget()(View(images, images.clone(), encoder=vae, target_image=grey))
    resized = DecoderTarget()(View(images, images.clone(), encoder=vae, target_image=big_grey))
    assert torch.allclose(small, resized, atol=1e-6)


def test_latent_losses_are_per_sample_and_differentiable(vae, images):
    grey = torch.full((1, 3, 32, 32), 0.5)
    with torch.no_grad():
        z_grey = vae.encode(grey * 2 - 1)

    def view_of(clean, adv):
        return View(clean, adv, encoder=vae, target_latent=z_grey, target_image=grey)

    for loss in (LatentL2(), TargetLatent(), DecoderTarget()):
        adv = perturbed(images)
        values = loss(view_of(images, adv))
        assert values.shape == (3,) and bool(torch.isfinite(values).all())
        values.sum().backward()
        assert bool(torch.isfinite(adv.grad).all()) and adv.grad.abs().sum() > 0, type(loss).__name__
        alone = torch.cat([loss(view_of(images[i:i + 1], adv.detach()[i:i + 1])) for i in range(3)])
        assert torch.allclose(values.detach(), alone, rtol=1e-4, atol=1e-7), type(loss).__name__
    assert LatentL2.maximize and not TargetLatent.maximize and not DecoderTarget.maximize


# -- the LPIPS module ------------------------------------------------------------------------------

def test_lpips_identity_is_zero_and_it_is_symmetric(alex, images):
    assert torch.equal(alex(images, images), torch.zeros(3))
    other = perturbed(images, 0.1).detach()
    d = alex(images, other)
    assert d.shape == (3,) and bool((d > 0).all())
    assert torch.allclose(d, alex(other, images), atol=1e-7)


def test_lpips_grows_with_the_noise_level(alex, images):
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(images.shape, generator=g)
    levels = [alex(images, (images + s * noise).clamp(0, 1)) for s in (0.01, 0.03, 0.1, 0.3)]
    for lower, higher in zip(levels, levels[1:]):
        assert bool((higher > lower).all())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_both_backbones_run_at_64x64_with_gradients(net, heads_files):
    model = LPIPS(net, random_backbone=True, heads_path=heads_files[net][0])
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    y = perturbed(x, 0.05)
    d = model(x, y)
    assert d.shape == (2,) and bool((d > 0).all())
    d.sum().backward()
    assert bool(torch.isfinite(y.grad).all()) and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_heads_load_from_a_file_in_the_real_key_format(net, heads_files):
    path, state = heads_files[net]
    model = LPIPS(net, random_backbone=True, heads_path=path)
    for head, key in zip(model.heads, HEAD_KEYS):
        assert torch.equal(head.data, state[key])


def test_bad_heads_files_are_weights_errors(tmp_path):
    bad = {key: torch.zeros(1, 3, 1, 1) for key in HEAD_KEYS}
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="shape"):
        LPIPS("alex", random_backbone=True, heads_path=tmp_path / "shape.pth")
    torch.save({"lin0.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "keys.pth")
    with pytest.raises(WeightsError, match="lin0.model.1.weight"):
        LPIPS("alex", random_backbone=True, heads_path=tmp_path / "keys.pth")
    write_heads(tmp_path / "neg.pth", "alex")
    state = torch.load(tmp_path / "neg.pth", weights_only=True)
    state["lin2.model.1.weight"][0, 0] = -1.0
    torch.save(state, tmp_path / "neg.pth")
    with pytest.raises(WeightsError, match="negative"):
        LPIPS("alex", random_backbone=True, heads_path=tmp_path / "neg.pth")


def test_backbone_loads_from_a_torchvision_checkpoint(tmp_path, alex, heads_files, images):
    # A checkpoint in torchvision's layout (features.N.* plus classifier.*), found in the weights folder.
    state = {f"features.{k}": v.clone() for k, v in alex.features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4096, 9216 // 256)
    torch.save(state, tmp_path / "alexnet-owt-7be5be79.pth")
    loaded = LPIPS("alex", weights_dir=tmp_path, heads_path=heads_files["alex"][0])
    other = perturbed(images, 0.1).detach()
    assert torch.allclose(loaded(images, other), alex(images, other))
    state.pop("features.10.bias")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="not a torchvision alex checkpoint"):
        LPIPS("alex", backbone_path=tmp_path / "broken.pth", random_heads=True)


def test_missing_weights_are_one_line_weights_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError) as info:
        LPIPS("vgg", random_heads=True)
    message = str(info.value)
    assert "\n" not in message and "vgg16-397923af.pth" in message and "download.pytorch.org" in message
    with pytest.raises(WeightsError) as info:
        LPIPS("alex", backbone_path=tmp_path / "nope.pth", random_heads=True)
    assert "\n" not in str(info.value) and "alexnet-owt-7be5be79.pth" in str(info.value)
    monkeypatch.setattr(lpips_core, "default_heads_path", lambda net: None)
    monkeypatch.setattr(lpips_core, "shipped_heads_path", lambda net: None)  # a broken install
    with pytest.raises(WeightsError) as info:
        LPIPS("alex", random_backbone=True)
    assert "\n" not in str(info.value) and "lpips" in str(info.value) and "heads_path" in str(info.value)
    with pytest.raises(ConfigError):
        LPIPS("squeeze", random_backbone=True, random_heads=True)


SHIPPED_SHA256 = {"alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                  "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"}


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_shipped_heads_load_without_the_lpips_package(net, monkeypatch):
    """Issue 12 item 15: the README's install is enough for LPIPS (facelock): guardkit ships lpips 0.1.4's
    weights/v0.1/{alex,vgg}.pth (BSD-2) as package data, and finds them with no lpips package anywhere."""
    import hashlib
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lpips" else real_find_spec(name, *a))
    assert lpips_core.default_heads_path(net) is None  # no lpips package folder to read from
    shipped = lpips_core.shipped_heads_path(net)
    assert shipped is not None and hashlib.sha256(shipped.read_bytes()).hexdigest() == SHIPPED_SHA256[net]
    module = LPIPS(net, random_backbone=True)
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    for head, key in zip(module.heads, HEAD_KEYS):
        assert torch.equal(head.data, state[key].float()) and float(head.data.sum()) > 0
    assert "BSD" in (shipped.parent / "LICENSE").read_text() or "Redistribution" in (shipped.parent / "LICENSE").read_text()


def test_shipped_heads_are_package_data():
    """The wheel carries the heads and their licence (pyproject's package-data for ``guardkit`` = core/)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["guardkit"]
    for name in ("alex.pth", "vgg.pth", "LICENSE"):
        relative = f"data/lpips/{name}"
        assert (root / "core" / relative).is_file() and any(fnmatch.fnmatch(relative, p) for p in patterns), name


# -- the LPIPS losses ------------------------------------------------------------------------------

def test_lpips_losses_on_a_view(vae, images, heads_files):
    options = dict(random_backbone=True, heads_path=heads_files["alex"][0])
    decoded_loss, pixel_loss = LpipsLoss(**options), LpipsPixelLoss(**options)
    assert LpipsLoss.maximize and not LpipsPixelLoss.maximize
    assert decoded_loss.module is None  # built on first call
    assert torch.equal(pixel_loss(View(images, images.clone())), torch.zeros(3))
    for loss in (decoded_loss, pixel_loss):
        adv = perturbed(images)
        values = loss(View(images, adv, encoder=vae))
        assert values.shape == (3,) and bool((values > 0).all())
        values.sum().backward()
        assert bool(torch.isfinite(adv.grad).all()) and adv.grad.abs().sum() > 0
        alone = torch.cat([loss(View(images[i:i + 1], adv.detach()[i:i + 1], encoder=vae)) for i in range(3)])
        assert torch.allclose(values.detach(), alone, rtol=1e-4, atol=1e-7)
    # It follows the input's dtype (and device).
    d64 = pixel_loss(View(images.double(), perturbed(images).detach().double()))
    assert d64.dtype == torch.float64 and pixel_loss.module.heads[0].dtype == torch.float64


def test_lpips_loss_options(tmp_path, heads_files):
    with pytest.raises(ConfigError, match="LPIPS loss .lpips.: unknown option"):
        LpipsLoss(netw="alex")
    with pytest.raises(ConfigError):
        LpipsLoss(net="squeeze")
    torch.save({f"features.{k}": v for k, v in LPIPS("alex", random_backbone=True, random_heads=True)
                .features.state_dict().items()}, tmp_path / "alexnet-owt-7be5be79.pth")
    loss = LpipsPixelLoss(RunConfig(weights_dir=tmp_path), heads_path=heads_files["alex"][0])
    x = torch.rand(1, 3, 32, 32)
    assert loss(View(x, x.clone())).shape == (1,)
    assert loss.module is not None


# -- losses are built like every other part: with the run and their options (issue 12, item 4) --------

class RecordingMethod:
    """A method that keeps the losses the engine built for it (needs nothing, does nothing)."""

    needs: ClassVar[tuple[str, ...]] = ()
    default_losses: ClassVar[dict[str, float]] = {"lpips-pixel": 1.0}

    def __init__(self, run, *, losses, **options) -> None:
        self.losses = losses

    def protect(self, images, faces, budget):
        return images


class RecordingMethodPlugin:
    from guardkit import hookimpl

    @hookimpl
    def guardkit_register_methods(self, register):
        register("recording", RecordingMethod, summary="keeps its losses (test)")


class BareLoss:
    """A loss written for the earlier ``factory()`` contract (no arguments at all)."""

    maximize: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, view):
        return (view.adv - view.clean).abs().flatten(1).mean(dim=1)


class BareLossPlugin:
    from guardkit import hookimpl

    @hookimpl
    def guardkit_register_losses(self, register):
        register("bare", BareLoss, summary="old-style loss (test)")


def recording_engine():
    from guardkit.engine import Engine
    from guardkit.plugins.losses import face as face_losses

    return Engine(entry_points=False, plugins=[lpips_mod, face_losses, RecordingMethodPlugin(), BareLossPlugin()])


def test_engine_builds_losses_with_their_options_and_the_runs_weights_dir(tmp_path):
    engine = recording_engine()
    run = RunConfig(weights_dir=tmp_path)
    built = engine.build_method("recording", run, part_options={"loss": {"lpips-pixel": {"net": "vgg"}}}).method
    (term,) = built.losses
    assert term.name == "lpips-pixel" and term.weight == 1.0
    assert term.loss.options["net"] == "vgg"  # was always alex: the engine built losses with no options
    assert term.loss.options["weights_dir"] == tmp_path  # and without the run: --weights-dir never reached LPIPS
    weights = {"lpips-pixel": 0.5, "pixel-l2": 1.0, "bare": 2.0}
    plain = engine.build_method("recording", RunConfig(), losses=weights).method
    assert [t.name for t in plain.losses] == ["lpips-pixel", "pixel-l2", "bare"]
    assert plain.losses[0].loss.options["net"] == "alex" and isinstance(plain.losses[2].loss, BareLoss)
    with pytest.raises(ConfigError, match="unknown option"):
        engine.build_method("recording", run, part_options={"loss": {"lpips-pixel": {"netw": "vgg"}}})
    with pytest.raises(ConfigError, match="takes no options"):
        engine.build_method("recording", run, losses={"bare": 1.0}, part_options={"loss": {"bare": {"x": 1}}})
    with pytest.raises(ConfigError, match="takes no options"):
        engine.build_method("recording", run, losses={"pixel-l2": 1.0},
                            part_options={"loss": {"pixel-l2": {"x": 1}}})


def test_lpips_loss_honours_net_and_finds_its_weights_in_the_runs_weights_dir(tmp_path, heads_files, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(lpips_core, "default_heads_path", lambda net: None)
    backbone = LPIPS("vgg", random_backbone=True, random_heads=True).features.state_dict()
    torch.save({f"features.{k}": v for k, v in backbone.items()}, tmp_path / "vgg16-397923af.pth")
    torch.save(heads_files["vgg"][1], tmp_path / "lpips_vgg.pth")
    built = recording_engine().build_method("recording", RunConfig(weights_dir=tmp_path),
                                            part_options={"loss": {"lpips-pixel": {"net": "vgg"}}}).method
    loss = built.losses[0].loss
    x = torch.rand(1, 3, 32, 32)
    assert loss.lpips(x).net_name == "vgg"
    assert torch.equal(loss.lpips(x).heads[0].data, heads_files["vgg"][1][HEAD_KEYS[0]])


def test_cli_loss_spec_carries_options_and_weight():
    from guardkit.cli.run import parse_losses

    assert parse_losses(["lpips:net=vgg=1", "face-cosine=1/2"]) == (
        {"lpips": 1.0, "face-cosine": 0.5}, {"lpips": {"net": "vgg"}})
    assert parse_losses(["lpips-pixel:net=vgg,random_heads=true=0.25"]) == (
        {"lpips-pixel": 0.25}, {"lpips-pixel": {"net": "vgg", "random_heads": True}})
    for bad in ("lpips:net=vgg", "lpips", "=1"):
        with pytest.raises(ConfigError, match="--loss"):
            parse_losses([bad])
    with pytest.raises(ConfigError, match="twice"):
        parse_losses(["lpips=1", "lpips:net=vgg=1"])
