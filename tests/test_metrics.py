"""Evaluation metrics: image (psnr, ssim, lpips, protected-psnr), CLIP (clip-s, clip-i), face (fr,
fr-distance, asr). Tiny real models (random LPIPS, tiny saved CLIPModel, TinyFaceModel) and the real
dlib face model on the shared photos."""

from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from guardkit.align import ARCFACE_TEMPLATE_112, similarity_transform
from guardkit.config import RunConfig
from guardkit.engine import Engine
from guardkit.errors import CapabilityError, ConfigError, NoFaceError, UnknownPartError, WeightsError
from guardkit.plugins.metrics import clip as clip_metrics
from guardkit.plugins.metrics import face as face_metrics
from guardkit.plugins.metrics import image as image_metrics
from guardkit.plugins.metrics.clip import ClipDirectional, ClipImage, clip_preprocess
from guardkit.plugins.metrics.face import (
    THRESHOLDS,
    AttackSuccess,
    FaceDistance,
    FaceSimilarity,
)
from guardkit.plugins.metrics.image import (
    LpipsMetric,
    ProtectedPsnr,
    Psnr,
    Ssim,
    gaussian_window,
    ssim,
)
from guardkit.registry import Registry, make_plugin_manager
from guardkit.testing import TinyFaceModel
from guardkit.types import EvalBatch, Face
from PIL import Image


pytestmark = pytest.mark.usefixtures("one_thread")


def rand_images(n=2, h=24, w=20, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def batch_of(edited, edited_clean=None, source=None, protected=None, prompt="Turn the person's hair pink", faces=()):
    source = edited if source is None else source
    return EvalBatch(source=source, protected=source if protected is None else protected, edited=edited,
                     edited_clean=edited if edited_clean is None else edited_clean, prompt=prompt, faces=faces)


# ------------------------------------------------------------------------------------------- registration
@pytest.mark.parametrize("module, names", [
    (image_metrics, {"psnr", "ssim", "lpips", "protected-psnr"}),
    (clip_metrics, {"clip-s", "clip-i"}),
    (face_metrics, {"fr", "fr-distance", "asr"}),
])
def test_registration_with_a_fresh_plugin_manager(module, names):
    pm, errors = make_plugin_manager(entry_points=False, plugins=[module])
    try:
        registry = Registry.from_plugin_manager(pm)
        assert not errors and set(registry.names("metric")) == names
        for name in names:
            spec = registry.get("metric", name)
            assert isinstance(spec.factory.higher_is_better, bool) and spec.summary
    finally:
        pm.unregister(module)


def test_directions():
    assert not Psnr.higher_is_better and not Ssim.higher_is_better and LpipsMetric.higher_is_better
    assert ProtectedPsnr.higher_is_better
    assert not ClipDirectional.higher_is_better and not ClipImage.higher_is_better
    assert not FaceSimilarity.higher_is_better and FaceDistance.higher_is_better and AttackSuccess.higher_is_better


# ------------------------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_identical_is_inf_and_constant_offset_is_20db():
    x = rand_images() * 0.8
    assert torch.isinf(Psnr(RunConfig()).score(batch_of(x))).all()
    got = Psnr(RunConfig()).score(batch_of(x + 0.1, x))
    assert got.shape == (2,) and torch.allclose(got, torch.full((2,), 20.0), atol=1e-3)


def test_psnr_is_per_sample_and_protected_psnr_compares_protected_with_source():
    x = rand_images() * 0.5
    edited = x.clone()
    edited[1] += 0.01  # 40 dB for sample 1 only
    got = Psnr(RunConfig()).score(batch_of(edited, x))
    assert math.isinf(got[0]) and got[1].item() == pytest.approx(40.0, abs=1e-3)
    cost = ProtectedPsnr(RunConfig()).score(batch_of(x, source=x, protected=x + 0.1))
    assert torch.allclose(cost, torch.full((2,), 20.0), atol=1e-3)


def test_image_metrics_refuse_options():
    with pytest.raises(ConfigError, match="takes no options"):
        Psnr(RunConfig(), bogus=1)


def naive_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM as a loop over every 11x11 window (Wang et al. 2004, Gaussian weights), no convolution."""
    g = gaussian_window(11, 1.5)
    w = torch.outer(g, g)
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                pa, pb = a[c, i:i + 11, j:j + 11].double(), b[c, i:i + 11, j:j + 11].double()
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(torch.stack(values).mean())


def test_ssim_window_is_torchmetrics_gaussian():
    g = gaussian_window()
    assert g.shape == (11,) and g.sum().item() == pytest.approx(1.0)
    assert g[5].item() == pytest.approx(1 / sum(math.exp(-((k / 1.5) ** 2) / 2) for k in range(-5, 6)))


def test_ssim_identical_is_one_and_drops_with_noise():
    x = rand_images(h=32, w=32)
    assert torch.allclose(Ssim(RunConfig()).score(batch_of(x)), torch.ones(2), atol=1e-6)
    gen = torch.Generator().manual_seed(1)
    scores = [Ssim(RunConfig()).score(batch_of((x + s * torch.randn(x.shape, generator=gen)).clamp(0, 1), x))
              for s in (0.02, 0.1, 0.3)]
    assert all((hi > lo).all() for hi, lo in zip(scores, scores[1:]))
    assert (scores[0] < 1).all()


def test_ssim_matches_a_windowed_reference_and_a_known_value():
    a, b = rand_images(n=2, h=14, w=13, seed=3).unbind(0)
    assert ssim(a[None], b[None]).item() == pytest.approx(naive_ssim(a, b), abs=1e-6)
    # two constant images: sigma = 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    const = ssim(torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.6)).item()
    assert const == pytest.approx((2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4), abs=1e-6)
    with pytest.raises(ConfigError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------- LPIPS
def test_lpips_metric_random_backbone_zero_for_identical_positive_otherwise():
    metric = LpipsMetric(RunConfig(), net="alex", random_backbone=True, random_heads=True)
    metric.load()
    x = rand_images(h=64, w=64)
    same = metric.score(batch_of(x))
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    other = metric.score(batch_of(x, rand_images(h=64, w=64, seed=5)))
    assert (other > 0).all()


def test_lpips_metric_defaults_to_vgg_and_checks_options(tmp_path):
    assert LpipsMetric(RunConfig()).options["net"] == "vgg"  # FaceLock's eval_lpips.py
    assert LpipsMetric(RunConfig(weights_dir=tmp_path)).options["weights_dir"] == tmp_path
    with pytest.raises(ConfigError, match="unknown option"):
        LpipsMetric(RunConfig(), nett="vgg")
    with pytest.raises(ConfigError, match="net must be"):
        LpipsMetric(RunConfig(), net="squeeze")


# ------------------------------------------------------------------------------------------- CLIP
CLIP_ID = "tiny/clip"


def save_tiny_clip(folder: Path) -> Path:
    """A seeded random tiny CLIPModel (32 px images, patch 8) and an in-memory CLIPTokenizer, saved."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    chars = list(string.ascii_lowercase) + list("'.,-!?")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for token in ("th", "the</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[("t", "h"), ("th", "e</w>")])
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory) -> Path:
    """A weights folder laid out as ``weights_dir/<model_id>``."""
    root = tmp_path_factory.mktemp("weights")
    save_tiny_clip(root / CLIP_ID)
    return root


def test_clip_metrics_load_through_weights_dir_and_path(clip_weights):
    x = rand_images(h=40, w=48)
    by_dir = ClipImage(RunConfig(weights_dir=clip_weights), model_id=CLIP_ID)
    by_path = ClipImage(RunConfig(), path=str(clip_weights / CLIP_ID), image_size=32)
    by_dir.load()
    assert by_dir.encoder.image_size == 32  # the model's vision image size
    y = rand_images(h=40, w=48, seed=9)
    assert torch.allclose(by_dir.score(batch_of(y, source=x)), by_path.score(batch_of(y, source=x)))


def test_clip_i_identical_is_one_and_in_range(clip_weights):
    metric = ClipImage(RunConfig(weights_dir=clip_weights), model_id=CLIP_ID)
    x, y = rand_images(h=40, w=48), rand_images(h=40, w=48, seed=4)
    same = metric.score(batch_of(x))
    assert same.shape == (2,) and torch.allclose(same, torch.ones(2), atol=1e-5)
    other = metric.score(batch_of(y, source=x))
    assert ((other >= -1) & (other <= 1)).all() and (other < 1 - 1e-6).all()
    again = ClipImage(RunConfig(weights_dir=clip_weights), model_id=CLIP_ID).score(batch_of(y, source=x))
    assert torch.equal(other, again)


def test_clip_s_zero_when_unedited_and_in_range(clip_weights):
    metric = ClipDirectional(RunConfig(weights_dir=clip_weights), model_id=CLIP_ID)
    x, y = rand_images(h=40, w=48), rand_images(h=40, w=48, seed=4)
    assert torch.equal(metric.score(batch_of(x)), torch.zeros(2))
    s = metric.score(batch_of(y, source=x))
    assert s.shape == (2,) and ((s >= -1) & (s <= 1)).all() and (s != 0).all()
    assert torch.equal(s, metric.score(batch_of(y, source=x)))
    other_prompt = metric.score(batch_of(y, source=x, prompt="Let the person wear a helmet"))
    assert not torch.equal(s, other_prompt)


def test_clip_preprocess_matches_the_pil_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    x = rand_images(n=1, h=45, w=60, seed=2)
    x = torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bilinear")  # smooth: resampling is comparable
    x = torch.nn.functional.interpolate(x, size=(45, 60), mode="bilinear")
    uint8 = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    ours = clip_preprocess(torch.from_numpy(uint8).permute(2, 0, 1)[None].float() / 255, 32)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ref = torch.as_tensor(np.asarray(processor(images=Image.fromarray(uint8), return_tensors="pt")["pixel_values"]))
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().mean() < 0.01 and (ours - ref).abs().max() < 0.03  # uint8 rounding: 1/255/std


def test_clip_missing_weights_is_one_line_with_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        ClipImage(RunConfig(weights_dir=tmp_path)).load()
    message = str(err.value)
    assert "\n" not in message and "hf download openai/clip-vit-base-patch32" in message
    with pytest.raises(WeightsError, match="hf download") as err:
        ClipDirectional(RunConfig(), path=str(tmp_path / "nowhere")).load()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown option"):
        ClipImage(RunConfig(), modelid="x")


# ------------------------------------------------------------------------------------------- face metrics
def tiny_faces(size=64, index=0):
    """One arcface5 face filling the middle of a ``size`` px photo."""
    points = ARCFACE_TEMPLATE_112 * (size / 112 * 0.8) + size * 0.1
    return Face(index, (size * 0.1, size * 0.1, size * 0.9, size * 0.9), tuple(map(tuple, points)), "arcface5")


@pytest.fixture(scope="module")
def tiny_model():
    model = TinyFaceModel(RunConfig())
    model.load()
    return model


@pytest.fixture(scope="module")
def parts():
    """What an engine hands the FR metrics (``needs_parts``): its face finders and models, by name."""
    return Engine().parts


def test_fr_metrics_with_the_tiny_face_model(tiny_model, parts):
    x = rand_images(n=2, h=64, w=64)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))).clamp(0, 1)
    faces = (tiny_faces(index=0), tiny_faces(index=1))
    same, changed = batch_of(x, faces=faces), batch_of(noisy, source=x, faces=faces)
    fr = FaceSimilarity(RunConfig(), face_model=tiny_model, parts=parts)
    dist = FaceDistance(RunConfig(), face_model=tiny_model, parts=parts)
    asr = AttackSuccess(RunConfig(), face_model=tiny_model, parts=parts)
    assert torch.allclose(fr.score(same), torch.ones(2), atol=1e-5)
    assert torch.allclose(dist.score(same), torch.zeros(2), atol=1e-5)
    assert torch.equal(asr.score(same), torch.zeros(2))
    sim, d = fr.score(changed), dist.score(changed)
    assert (sim < 1 - 1e-4).all() and (d > 1e-4).all()
    assert torch.allclose(d, 1 - sim, atol=1e-5)  # TinyFaceModel's own distance is 1 - cos
    strict = AttackSuccess(RunConfig(), face_model=tiny_model, threshold=float(d.min()) / 2, parts=parts)
    assert torch.equal(strict.score(changed), torch.ones(2))
    assert torch.equal(asr.score(changed), (d > TinyFaceModel.threshold).float())


def test_fr_metrics_are_nan_without_faces_and_average_several_faces(tiny_model, parts):
    x = rand_images(n=2, h=64, w=64)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))).clamp(0, 1)
    fr = FaceSimilarity(RunConfig(), face_model=tiny_model, parts=parts)
    assert torch.isnan(fr.score(batch_of(noisy, source=x))).all()
    one = fr.score(batch_of(noisy, source=x, faces=(tiny_faces(index=0),)))
    assert not torch.isnan(one[0]) and torch.isnan(one[1])
    shifted = Face(0, (0, 0, 40, 40), tuple((px - 8, py - 8) for px, py in tiny_faces().landmarks), "arcface5")
    both = fr.score(batch_of(noisy, source=x, faces=(tiny_faces(index=0), shifted)))
    alone = fr.score(batch_of(noisy, source=x, faces=(shifted,)))
    assert both[0].item() == pytest.approx((one[0].item() + alone[0].item()) / 2, abs=1e-5)


def test_fr_options():
    with pytest.raises(ConfigError, match="unknown option"):
        FaceSimilarity(RunConfig(), modle="dlib")
    with pytest.raises(ConfigError, match="threshold must be"):
        AttackSuccess(RunConfig(), threshold=0)
    assert FaceSimilarity(RunConfig()).model_name == "dlib"


def test_fr_metrics_build_their_parts_from_the_engine_that_built_them(tiny_model):
    """No second plugin manager: a metric's face model and finder come from its engine's registry, so a plugin
    disabled there is not used behind its back."""
    run = RunConfig()
    no_dlib_model = Engine(disabled={"dlib_face_model"})
    metric = no_dlib_model.build_part("metric", "fr", run, model="dlib")
    assert metric.parts is not None
    with pytest.raises(UnknownPartError, match="unknown face model 'dlib'") as info:
        metric.load()
    assert "\n" not in str(info.value) and metric.face_model is None
    no_dlib_finder = Engine(disabled={"dlib_face_finder"})
    redetecting = no_dlib_finder.build_part("metric", "fr-distance", run, face_model=tiny_model)
    with pytest.raises(UnknownPartError, match="unknown face finder 'dlib'"):
        redetecting.load()
    with pytest.raises(UnknownPartError, match="unknown face finder 'dlib'"):  # the target photo's finder too
        no_dlib_finder.build_part("metric", "asr", run, face_model=tiny_model, redetect=False,
                                  target=np.zeros((64, 64, 3), np.uint8)).load()
    # built without an engine, a metric that must build a part by name says so in one line
    with pytest.raises(CapabilityError, match="engine.build_part") as info:
        FaceSimilarity(run, model="dlib").load()
    assert "\n" not in str(info.value)
    # the same engine, with the finder given as an instance, needs nothing from the registry
    given = no_dlib_finder.build_part("metric", "fr", run, face_model=tiny_model, face_finder=BlindFinder())
    given.load()
    assert given.face_finder.__class__ is BlindFinder


def test_threshold_table_matches_the_face_models():
    from guardkit.plugins.face_models.adaface import AdaFace
    from guardkit.plugins.face_models.arcface_onnx import ArcFaceONNX
    from guardkit.plugins.face_models.dlib_resnet import DlibFaceModel

    for name, cls in (("dlib", DlibFaceModel), ("arcface", ArcFaceONNX), ("adaface", AdaFace)):
        assert THRESHOLDS[name][0] == cls.threshold and THRESHOLDS[name][2]


# ------------------------------------------------------------------------------------------- real dlib
FACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def load_photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(FACES_DIR / f"{name}.jpg").convert("RGB"))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0


def warp_onto(image: np.ndarray, face: Face, target: Face, size: tuple[int, int]) -> np.ndarray:
    """``image`` warped (similarity, from the 5 landmarks) so that ``face`` lies where ``target`` is."""
    to_target = np.vstack([similarity_transform(np.asarray(face.landmarks), np.asarray(target.landmarks)), [0, 0, 1]])
    inverse = np.linalg.inv(to_target)[:2].reshape(-1)  # PIL maps output pixels back to input pixels
    return np.asarray(Image.fromarray(image).transform(size, Image.Transform.AFFINE, tuple(inverse),
                                                       resample=Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def dlib_setup():
    pytest.importorskip("dlib")
    from guardkit.plugins.face_finders.dlib_finder import DlibFaceFinder

    finder = DlibFaceFinder()
    photos = {name: load_photo(name) for name in ("obama", "obama2", "biden")}
    faces = {name: finder.find(photo)[0] for name, photo in photos.items()}
    fr = Engine().build_part("metric", "fr", RunConfig(), model="dlib")  # the engine's registry builds its model
    fr.load()
    return photos, faces, fr.face_model, fr.parts


def test_fr_metrics_with_the_real_dlib_model(dlib_setup):
    photos, faces, model, parts = dlib_setup
    source = to_tensor(photos["obama"])
    height, width = photos["obama"].shape[:2]
    others = {name: to_tensor(warp_onto(photos[name], faces[name], faces["obama"], (width, height)))
              for name in ("obama2", "biden")}
    noisy = (source + 0.3 * torch.randn(source.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    edited = torch.cat([source, others["obama2"], others["biden"], noisy])
    sources = source.expand_as(edited)
    batch = EvalBatch(source=sources, protected=sources, edited=edited, edited_clean=sources, prompt="p",
                      faces=tuple(faces["obama"].with_index(i) for i in range(4)))
    dist = FaceDistance(RunConfig(), face_model=model, parts=parts).score(batch)
    asr = AttackSuccess(RunConfig(), face_model=model, parts=parts).score(batch)
    sim = FaceSimilarity(RunConfig(), face_model=model, parts=parts).score(batch)
    assert dist[0].item() == pytest.approx(0.0, abs=1e-4) and sim[0].item() == pytest.approx(1.0, abs=1e-5)
    assert dist[1] < 0.6 < dist[2]  # the same person matches, another does not
    assert dist[3] > dist[0] + 0.05
    assert asr[:3].tolist() == [0.0, 0.0, 1.0]
    assert sim[1] > sim[2]


def test_fr_metric_builds_its_model_from_the_registry(dlib_setup):
    _, _, model, _ = dlib_setup
    assert type(model).__name__ == "DlibFaceModel"
    asr = AttackSuccess(RunConfig(), face_model=model)
    assert asr.match_threshold() == THRESHOLDS["dlib"][0]


# ------------------------------------------------------------------------------------------- issue 12, items 9 and 10
def test_fr_metrics_find_the_face_again_on_the_edit(dlib_setup):
    """An edit that moves the head (here: the same photo shifted by 24 x 20 px) is the same person; aligned at
    the source's landmarks it looks like another one. FaceLock's evaluation re-detects: so do we, by default."""
    photos, faces, model, parts = dlib_setup
    source = to_tensor(photos["obama"])
    moved = to_tensor(np.roll(photos["obama"], (20, 24), axis=(0, 1)))
    batch = EvalBatch(source=source, protected=source, edited=moved, edited_clean=source, prompt="p",
                      faces=(faces["obama"],))
    redetected = FaceDistance(RunConfig(), face_model=model, parts=parts)
    at_source = FaceDistance(RunConfig(), face_model=model, redetect=False)
    assert redetected.score(batch).item() < 0.1 < at_source.score(batch).item()
    assert redetected.redetected == 1 and redetected.fallbacks == 0 and "re-detected" in redetected.alignment
    assert "source's landmarks" in at_source.alignment
    # where the finder finds no face on the edit: the source's landmarks, counted as a fallback
    blind = FaceDistance(RunConfig(), face_model=model, face_finder=BlindFinder())
    assert blind.score(batch).item() == pytest.approx(at_source.score(batch).item(), abs=1e-6)
    assert blind.fallbacks == 1 and "1 of 1 faces fell back" in blind.alignment


class BlindFinder:
    """A face finder that finds no face (an edit that hid the face from the detector)."""

    scheme = "dlib5"

    def load(self):
        pass

    def find(self, image):
        return []


def test_asr_at_the_protocols_false_accept_rates(tiny_model):
    from guardkit.plugins.metrics.face import PROTOCOL_FAR_THRESHOLDS

    x = rand_images(n=2, h=64, w=64)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))).clamp(0, 1)
    batch = batch_of(noisy, source=x, faces=(tiny_faces(index=0), tiny_faces(index=1)))
    cos = FaceSimilarity(RunConfig(), face_model=tiny_model, redetect=False).score(batch)
    for far, threshold in PROTOCOL_FAR_THRESHOLDS["ir152"].items():  # the tiny model standing in for IR152
        asr = AttackSuccess(RunConfig(), face_model=tiny_model, model="ir152", far=far, redetect=False)
        assert asr.match_threshold() == threshold
        assert torch.equal(asr.score(batch), (cos < threshold).float())
    assert PROTOCOL_FAR_THRESHOLDS["irse50"][0.01] == 0.2410 and PROTOCOL_FAR_THRESHOLDS["mobileface"][0.001] == 0.3809
    # a model's own far_thresholds win; a model without published ones is refused in one line, not invented
    calibrated = type("Calibrated", (TinyFaceModel,), {"far_thresholds": {0.01: float(cos.max()) + 1e-3}})()
    assert torch.equal(AttackSuccess(RunConfig(), face_model=calibrated, model="x", far=0.01,
                                     redetect=False).score(batch), torch.ones(2))
    for name in ("dlib", "facenet", "arcface", "adaface"):
        with pytest.raises(ConfigError, match="no published FAR thresholds") as info:
            AttackSuccess(RunConfig(), model=name, far=0.01)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="only, not at 0.05"):
        AttackSuccess(RunConfig(), model="ir152", far=0.05)
    with pytest.raises(ConfigError, match="not both"):
        AttackSuccess(RunConfig(), model="ir152", far=0.01, threshold=0.5)


def test_impersonation_asr_counts_edits_that_match_the_target_identity(dlib_setup):
    photos, faces, model, parts = dlib_setup
    source = to_tensor(photos["obama"])
    batch = EvalBatch(source=source, protected=source, edited=source, edited_clean=source, prompt="p",
                      faces=(faces["obama"],))
    dodging = AttackSuccess(RunConfig(), face_model=model, parts=parts)
    to_obama2 = AttackSuccess(RunConfig(), face_model=model, target=FACES_DIR / "obama2.jpg", parts=parts)
    to_biden = AttackSuccess(RunConfig(), face_model=model, target=photos["biden"], parts=parts)
    assert dodging.score(batch).item() == 0.0  # the unedited photo still matches the person
    assert to_obama2.score(batch).item() == 1.0  # ... and so a photo of the same person as the target
    assert to_biden.score(batch).item() == 0.0  # but not another person's
    with pytest.raises(NoFaceError):
        AttackSuccess(RunConfig(), face_model=model, target=np.zeros((64, 64, 3), np.uint8), parts=parts).load()
