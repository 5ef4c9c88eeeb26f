"""Editor ``ip2p``: a complete tiny random InstructPix2Pix pipeline, saved to disk and loaded back through the
part's real offline loading code (``path`` option, ``weights_dir``, the Hugging Face cache)."""

from __future__ import annotations

import pytest
import torch

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.editors import ip2p
from guardkit.plugins.editors.ip2p import InstructPix2Pix
from guardkit.registry import Registry, make_plugin_manager

R = 32  # tiny edit resolution: 4x4 latents
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's byte -> printable character table (the alphabet of byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def _tiny_tokenizer():
    """A CLIP BPE tokenizer built in memory (transformers 5): every byte-level character, alone and as a word
    end, plus a few merges, so any prompt tokenizes without files."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("th", "e</w>"), ("e", "r</w>"), ("o", "n</w>"), ("p", "e"), ("pe", "r")]
    tokens += [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_ip2p(folder, seed: int = 0):
    """Save a seeded random tiny ``StableDiffusionInstructPix2PixPipeline`` (8-channel UNet input, VAE
    downsampling 8, 4 latent channels) to ``folder`` in the diffusers layout. Returns the folder."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            in_channels=8, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, sample_size=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
        vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
            norm_num_groups=4, latent_channels=4, sample_size=R, scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    pipe = diffusers.StableDiffusionInstructPix2PixPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=diffusers.EulerAncestralDiscreteScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return build_tiny_ip2p(tmp_path_factory.mktemp("ip2p") / "timbrooks" / "instruct-pix2pix")


@pytest.fixture(scope="module")
def editor(pipeline_dir):
    part = InstructPix2Pix(RunConfig(), path=str(pipeline_dir), resolution=R, steps=STEPS)
    part.load()
    return part


@pytest.fixture(scope="module")
def photos():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, R, R, generator=gen)


def test_defaults_are_the_papers_protocol():
    cfg = InstructPix2Pix().config
    assert (cfg.resolution, cfg.steps, cfg.image_guidance, cfg.guidance) == (512, 50, 1.5, 7.5)
    with pytest.raises(ConfigError, match="unknown option"):
        InstructPix2Pix(RunConfig(), strength=0.5)
    with pytest.raises(ConfigError, match="multiple of 8"):
        InstructPix2Pix(RunConfig(), resolution=30)


def test_loads_offline_without_safety_checker(editor):
    assert editor.pipe.safety_checker is None
    assert editor.pipe.unet.config.in_channels == 8
    editor.load()  # idempotent


def test_edit_shape_range_and_input_untouched(editor, photos):
    before = photos.clone()
    out = editor.edit(photos, "turn the hair pink", seed=0)
    assert out.shape == (2, 3, R, R)
    assert out.dtype == photos.dtype and out.device == photos.device
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(photos, before)


def test_seed_and_prompt_decide_the_edit(editor, photos):
    x = photos[:1]
    a = editor.edit(x, "turn the hair pink", seed=3)
    assert torch.equal(a, editor.edit(x, "turn the hair pink", seed=3))
    assert not torch.allclose(a, editor.edit(x, "turn the hair pink", seed=4), atol=1e-4)
    assert not torch.allclose(a, editor.edit(x, "let the person wear a helmet", seed=3), atol=1e-4)


def test_same_seed_gives_each_photo_the_same_noise(editor, photos):
    """Photo i of a batch is edited exactly as it is alone: the noise depends on the seed, not on the batch."""
    both = editor.edit(photos, "add a beach background", seed=7)
    for i in range(photos.shape[0]):
        alone = editor.edit(photos[i:i + 1], "add a beach background", seed=7)
        torch.testing.assert_close(both[i:i + 1], alone, atol=1e-5, rtol=0)
    # two copies of one photo under one seed: identical edits, so differences between a clean and a
    # protected edit come from the photos only
    twin = editor.edit(photos[:1].repeat(2, 1, 1, 1), "add a beach background", seed=7)
    torch.testing.assert_close(twin[0], twin[1], atol=1e-5, rtol=0)
    assert not torch.allclose(both[0], both[1], atol=1e-4)


def test_non_square_photos_are_center_cropped(editor, photos):
    """A 48x32 (HxW) photo is cropped to its central 32x32 square: the rows outside do not matter."""
    square = photos[:1]
    tall = torch.cat([torch.zeros(1, 3, 8, R), square, torch.ones(1, 3, 8, R)], dim=2)
    torch.testing.assert_close(editor.prepare(tall), square, atol=0, rtol=0)
    torch.testing.assert_close(editor.edit(tall, "let it be snowy", seed=1),
                               editor.edit(square, "let it be snowy", seed=1), atol=1e-6, rtol=0)
    # a bigger square photo is resized to the edit resolution
    big = torch.rand(1, 3, 2 * R, 3 * R, generator=torch.Generator().manual_seed(2))
    assert editor.edit(big, "let it be snowy", seed=1).shape == (1, 3, R, R)


def test_bad_inputs_are_one_line_errors(editor):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        editor.edit(torch.full((1, 3, R, R), 2.0), "x", seed=0)
    with pytest.raises(ConfigError, match=r"\[B,3,H,W\]"):
        editor.edit(torch.rand(3, R, R), "x", seed=0)


def test_weights_dir_finds_the_hub_id_folder(pipeline_dir):
    weights_dir = pipeline_dir.parent.parent  # .../timbrooks/instruct-pix2pix
    part = InstructPix2Pix(RunConfig(weights_dir=weights_dir), resolution=R, steps=1)
    part.load()
    assert part.pipe.unet.config.in_channels == 8


def test_missing_weights_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        InstructPix2Pix(RunConfig(weights_dir=tmp_path / "weights")).load()
    message = str(info.value)
    assert "\n" not in message
    assert "timbrooks/instruct-pix2pix" in message and "hf download" in message and "--editor-path" in message
    with pytest.raises(WeightsError) as info:
        InstructPix2Pix(RunConfig(), path=str(tmp_path / "nowhere")).load()
    assert "\n" not in str(info.value) and "hf download timbrooks/instruct-pix2pix" in str(info.value)


def test_registration_through_a_fresh_plugin_manager():
    pm, errors = make_plugin_manager(entry_points=False, plugins=[ip2p])
    assert errors == []
    spec = Registry.from_plugin_manager(pm).get("editor", "ip2p")
    assert spec.factory is InstructPix2Pix
    assert "InstructPix2Pix" in spec.summary
