"""Encoders ``sd-vae`` and ``flux`` on tiny real ``AutoencoderKL`` architectures with seeded random weights.

Each tiny VAE is saved with ``save_pretrained`` and loaded back through the part's own loading code
(local folder, ``local_files_only=True``); nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.encoders import flux_vae, sd_vae
from guardkit.registry import Registry, make_plugin_manager
from guardkit.testing import EncoderContract

diffusers = pytest.importorskip("diffusers")

TINY = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
)
KINDS = {
    # module, class, part name, tiny config extras (the real configs' latent layout, scale and shift)
    "sd-vae": (sd_vae, sd_vae.SDVAE, dict(latent_channels=4, scaling_factor=0.18215)),
    "flux": (flux_vae, flux_vae.FluxVAE, dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                                              use_quant_conv=False, use_post_quant_conv=False)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_vaes(tmp_path_factory):
    """name -> (folder with the saved tiny VAE, the in-memory diffusers model it was saved from)."""
    out = {}
    for seed, (name, (_, _, extra)) in enumerate(KINDS.items()):
        torch.manual_seed(seed)
        model = diffusers.AutoencoderKL(**TINY, **extra).eval()
        folder = tmp_path_factory.mktemp(name.replace("-", "_")) / "vae"
        model.save_pretrained(folder)
        out[name] = (folder, model)
    return out


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def make(kind, tiny_vaes, run=None, **options):
    cls = KINDS[kind][1]
    enc = cls(run or RunConfig(), path=str(tiny_vaes[kind][0]), **options)
    enc.load()
    return enc


def images(b=2, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def test_shapes_and_round_trip(kind, tiny_vaes):
    enc = make(kind, tiny_vaes)
    x = images()
    z = enc.encode(x)
    assert z.shape == (2, enc.latent_channels, 16 // 8, 24 // 8) and z.dtype == x.dtype
    y = enc.decode(z)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()


def test_scale_and_shift_from_config_exactly(kind, tiny_vaes):
    _, model = tiny_vaes[kind]
    extra = KINDS[kind][2]
    enc = make(kind, tiny_vaes)
    assert enc.scaling_factor == extra["scaling_factor"]
    assert enc.shift_factor == extra.get("shift_factor", 0.0)
    x = images()
    with torch.no_grad():
        mean = model.encode(x).latent_dist.mean
        expected = (mean - enc.shift_factor) * enc.scaling_factor
        z = enc.encode(x)
        torch.testing.assert_close(z, expected, rtol=0, atol=0)
        decoded = model.decode(z / enc.scaling_factor + enc.shift_factor).sample
        torch.testing.assert_close(enc.decode(z), decoded, rtol=0, atol=0)


def test_scale_read_from_config_not_hard_coded(tiny_vaes, tmp_path):
    folder, model = tiny_vaes["flux"]
    torch.manual_seed(5)
    other = diffusers.AutoencoderKL(**TINY, **{**KINDS["flux"][2], "scaling_factor": 0.5, "shift_factor": -0.25})
    other.save_pretrained(tmp_path / "vae")
    enc = flux_vae.FluxVAE(RunConfig(), path=str(tmp_path))  # the repo-shaped folder holding vae/
    enc.load()
    assert (enc.scaling_factor, enc.shift_factor) == (0.5, -0.25)


def test_flux_values_used_when_config_omits_them(tiny_vaes, tmp_path):
    folder, _ = tiny_vaes["flux"]
    target = tmp_path / "vae"
    target.mkdir()
    config = json.loads((folder / "config.json").read_text())
    del config["scaling_factor"], config["shift_factor"]
    (target / "config.json").write_text(json.dumps(config))
    for weights in folder.glob("*.safetensors"):
        (target / weights.name).write_bytes(weights.read_bytes())
    enc = flux_vae.FluxVAE(RunConfig(), path=str(target))
    enc.load()
    assert (enc.scaling_factor, enc.shift_factor) == (0.3611, 0.1159)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_flow_to_the_image(kind, tiny_vaes, checkpointing):
    enc = make(kind, tiny_vaes, gradient_checkpointing=checkpointing)
    assert all(not p.requires_grad for p in enc.vae.parameters())
    x = images(b=1, h=16, w=16).requires_grad_(True)
    loss = enc.decode(enc.encode(x)).square().mean()
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu(kind, tiny_vaes, dtype):
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    enc = make(kind, tiny_vaes, RunConfig(dtype=name))
    assert next(enc.vae.parameters()).dtype == dtype
    x = images(b=1, h=16, w=16).requires_grad_(True)
    z = enc.encode(x)  # fp32 in, the VAE runs in half precision, fp32 out
    assert z.dtype == torch.float32
    y = enc.decode(z)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    reference = make(kind, tiny_vaes).encode(x.detach())
    torch.testing.assert_close(z.detach(), reference, rtol=0.1, atol=0.1)


def test_sample_option_is_seeded(kind, tiny_vaes):
    x = images(b=1, h=16, w=16)
    with torch.no_grad():
        mean = make(kind, tiny_vaes).encode(x)
        a = make(kind, tiny_vaes, RunConfig(seed=3), sample=True).encode(x)
        b = make(kind, tiny_vaes, RunConfig(seed=3), sample=True).encode(x)
        c = make(kind, tiny_vaes, RunConfig(seed=4), sample=True).encode(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, mean) and not torch.equal(a, c)


@pytest.mark.parametrize("shape", [(1, 3, 20, 16), (1, 3, 16, 12)])
def test_size_not_multiple_of_8_is_a_config_error(kind, tiny_vaes, shape):
    enc = make(kind, tiny_vaes)
    with pytest.raises(ConfigError, match="multiples of 8"):
        enc.encode(torch.zeros(shape))


def test_bad_shapes_and_options_are_config_errors(kind, tiny_vaes):
    enc = make(kind, tiny_vaes)
    with pytest.raises(ConfigError):
        enc.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ConfigError):
        enc.decode(torch.zeros(1, enc.latent_channels + 1, 4, 4))
    with pytest.raises(ConfigError, match="unknown option"):
        KINDS[kind][1](RunConfig(), pathh="x")


def test_load_is_idempotent(kind, tiny_vaes):
    enc = make(kind, tiny_vaes)
    vae = enc.vae
    enc.load()
    assert enc.vae is vae


def test_weights_dir_layout(kind, tiny_vaes, tmp_path):
    folder, _ = tiny_vaes[kind]
    cls = KINDS[kind][1]
    target = tmp_path / cls.HUB_ID / "vae"
    target.mkdir(parents=True)
    for f in folder.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    enc = cls(RunConfig(weights_dir=tmp_path))
    enc.load()
    assert enc.vae.config.latent_channels == cls.latent_channels


def test_wrong_vae_for_the_encoder_is_a_weights_error(tiny_vaes):
    folder, _ = tiny_vaes["sd-vae"]
    with pytest.raises(WeightsError, match="4 latent channels, expected 16"):
        flux_vae.FluxVAE(RunConfig(), path=str(folder)).load()


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


def test_missing_weights_in_cache_is_one_line(kind, empty_hf_cache, tmp_path):
    cls = KINDS[kind][1]
    for run in (RunConfig(), RunConfig(weights_dir=tmp_path / "weights")):
        with pytest.raises(WeightsError) as info:
            cls(run).load()
        message = str(info.value)
        assert "\n" not in message
        assert f"{cls.HUB_ID}@{cls.REVISION} subfolder vae" in message
        assert str(empty_hf_cache) in message and f"hf download {cls.HUB_ID}" in message
        if run.weights_dir is not None:
            assert str(run.weights_dir / cls.HUB_ID) in message


def test_missing_path_is_one_line(kind, empty_hf_cache, tmp_path):
    cls = KINDS[kind][1]
    with pytest.raises(WeightsError) as info:
        cls(RunConfig(), path=str(tmp_path / "nowhere")).load()
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message and cls.HUB_ID in message


def test_incomplete_folder_is_one_line(kind, tiny_vaes, tmp_path):
    folder, _ = tiny_vaes[kind]
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    with pytest.raises(WeightsError) as info:
        KINDS[kind][1](RunConfig(), path=str(tmp_path)).load()
    message = str(info.value)
    assert "\n" not in message and "incomplete" in message and KINDS[kind][1].HUB_ID in message


def test_registered_with_capabilities(kind):
    module, cls, extra = KINDS[kind]
    pm, errors = make_plugin_manager(entry_points=False, plugins=[module])
    try:
        assert errors == []
        registry = Registry.from_plugin_manager(pm)
        spec = registry.get("encoder", kind)
        assert spec.factory is cls and spec.summary
        assert spec.capabilities["differentiable"] is True
        assert spec.capabilities["latent_channels"] == extra["latent_channels"]
        assert spec.capabilities["downsample"] == 8
        assert registry.names("encoder") == [kind]
    finally:
        pm.unregister(module)


def test_loads_from_the_hf_cache(kind, tiny_vaes, empty_hf_cache):
    """A cache laid out as `hf download` leaves it (refs/main -> snapshots/<sha>/vae/...)."""
    folder, model = tiny_vaes[kind]
    cls = KINDS[kind][1]
    repo = empty_hf_cache / ("models--" + cls.HUB_ID.replace("/", "--"))
    sha = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / cls.REVISION).write_text(sha)
    target = repo / "snapshots" / sha / "vae"
    target.mkdir(parents=True)
    for f in folder.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    enc = cls(RunConfig())
    enc.load()
    x = images(b=1, h=16, w=16)
    with torch.no_grad():
        expected = (model.encode(x).latent_dist.mean - enc.shift_factor) * enc.scaling_factor
        torch.testing.assert_close(enc.encode(x), expected, rtol=0, atol=0)


class TestSDVAEContract(EncoderContract):
    def make_encoder(self):
        return sd_vae.SDVAE.random(RunConfig(), config={**TINY, **KINDS["sd-vae"][2]})


class TestFluxVAEContract(EncoderContract):
    def make_encoder(self):
        return flux_vae.FluxVAE.random(RunConfig(), config={**TINY, **KINDS["flux"][2]})
