"""AdaFace IR-50 / IR-101 part: the real architecture with seeded random weights, saved as the official
Lightning checkpoints are and loaded through the part's own (safe) loading code. No network."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.face_models import adaface
from guardkit.plugins.face_models.adaface import AdaFace, AdaFaceNet, backbone_state_dict, infer_arch
from guardkit.registry import Registry, make_plugin_manager
from guardkit.testing import FaceModelContract

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "obama_small.jpg"

#: Parameter and buffer counts of the official ``net.build_model("ir_50" | "ir_101")`` (AdaFace net.py,
#: counted once from the authors' code): the port must have exactly the same tensors.
OFFICIAL_SIZES = {"ir_50": (43_585_600, 38_094), "ir_101": (65_150_912, 69_657)}


def _random_ir50() -> dict[str, torch.Tensor]:
    """A seeded IR-50 with non-trivial batch-norm statistics and PReLU slopes, as a state dict."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = AdaFaceNet("ir_50")
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, torch.nn.PReLU):
                m.weight.data.uniform_(0.0, 0.5)
    return net.state_dict()


def _photo_and_faces():
    from guardkit.plugins.face_finders.dlib_finder import DlibFaceFinder

    if not PHOTO.is_file():
        pytest.fail(f"shared test photo not found at {PHOTO}")
    array = np.asarray(Image.open(PHOTO).convert("RGB"))
    faces = DlibFaceFinder().find(array)
    assert len(faces) == 1
    images = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0
    return images, faces


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Iterator[Path]:
    """``adaface_ir50_ms1mv2.ckpt`` in the official layout (Lightning: ``state_dict`` with ``model.*``
    backbone keys, the ``head.kernel`` class centres, hyper-parameters). 175 MB: removed afterwards."""
    path = tmp_path_factory.mktemp("adaface") / "adaface_ir50_ms1mv2.ckpt"
    state = {"model." + k: v for k, v in _random_ir50().items()}
    state["head.kernel"] = torch.randn(512, 8)
    torch.save({"epoch": 25, "state_dict": state, "hyper_parameters": {"arch": "ir_50", "lr_milestones": [12, 20]}},
               path)
    yield path
    path.unlink()


@pytest.fixture(scope="module")
def model(ckpt_path) -> AdaFace:
    model = AdaFace(RunConfig(weights_dir=ckpt_path.parent))  # found by its default name
    model.load()
    return model


@pytest.fixture(scope="module")
def photo_batch():
    return _photo_and_faces()


class TestAdaFaceContract(FaceModelContract):
    @pytest.fixture(autouse=True)
    def _parts(self, model, photo_batch):
        self._model, self._batch = model, photo_batch

    def make_model(self):
        return self._model

    def make_batch(self):
        return self._batch


def test_load_official_layout(model):
    assert model.net is not None and model.net.arch == "ir_50"  # inferred from the keys
    assert not model.net.training
    assert not any(p.requires_grad for p in model.net.parameters())
    net = model.net
    model.load()  # idempotent
    assert model.net is net
    assert all(p.device == torch.device("cpu") for p in net.parameters())
    # every tensor came from the file (the loader builds on the meta device, then assigns)
    saved = _random_ir50()
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())


def test_embed_flips_to_bgr_and_normalises(model):
    torch.manual_seed(1)
    chip = torch.rand(1, 3, 112, 112)
    emb = model.embed(chip)
    assert emb.shape == (1, 512) and emb.dtype == torch.float32
    with torch.no_grad():  # the raw network on the chip, BGR-normalised by hand, and RGB-normalised
        manual, rgb = model.net(torch.cat([chip[:, [2, 1, 0]], chip]) * 2 - 1).split(1)
    torch.testing.assert_close(emb, manual, rtol=1e-4, atol=1e-5 * float(manual.abs().max()))
    assert (emb - rgb).norm() > 1e-3 * emb.norm()  # the flip matters to the network
    assert torch.allclose(model.distance(emb, manual), torch.zeros(1), atol=1e-5)


def test_gradients_reach_the_photo_through_align(model, photo_batch):
    images, faces = photo_batch
    x = images.clone().requires_grad_(True)
    chips = model.align(x, faces)
    assert chips.shape == (1, 3, 112, 112)
    emb = model.embed(chips)
    (grad,) = torch.autograd.grad(model.distance(emb, torch.ones_like(emb)).sum(), x)
    assert torch.isfinite(grad).all()
    left, top, right, bottom = (int(v) for v in faces[0].box)
    inside = grad[..., top:bottom, left:right].abs().sum()
    assert inside > 0.5 * grad.abs().sum()  # the gradient sits on the face
    assert images.grad is None and not images.requires_grad  # the photo itself is untouched


def test_ir101_keys_and_shapes_match_the_official_network():
    with torch.device("meta"):
        nets = {arch: AdaFaceNet(arch) for arch in ("ir_50", "ir_101")}
    for arch, net in nets.items():
        params = sum(p.numel() for p in net.parameters())
        buffers = sum(b.numel() for b in net.buffers())
        assert (params, buffers) == OFFICIAL_SIZES[arch], arch
        assert infer_arch(list(net.state_dict())) == arch
    state = nets["ir_101"].state_dict()
    assert len(nets["ir_101"].body) == 49
    assert tuple(state["output_layer.3.weight"].shape) == (512, 512 * 7 * 7)
    assert "output_layer.4.running_mean" in state and "output_layer.4.weight" not in state  # BN1d, no affine
    assert "body.0.shortcut_layer.0.weight" not in state  # 64 -> 64: max-pool shortcut
    assert tuple(state["body.3.shortcut_layer.0.weight"].shape) == (128, 64, 1, 1)
    assert tuple(state["body.48.res_layer.4.weight"].shape) == (512, 512, 3, 3)


def test_backbone_state_dict_accepts_the_known_layouts():
    t = torch.zeros(1)
    path = Path("x.ckpt")
    assert set(backbone_state_dict({"state_dict": {"model.a": t, "head.kernel": t}}, path)) == {"a"}
    assert set(backbone_state_dict({"model.net.a": t}, path)) == {"a"}  # CVLFace model.safetensors
    assert set(backbone_state_dict({"a": t}, path)) == {"a"}  # a plain state dict
    with pytest.raises(WeightsError, match="not an AdaFace checkpoint"):
        backbone_state_dict({"state_dict": {"a": "not a tensor"}}, path)


class _Payload:
    """A custom object in a checkpoint: unpickling it would call ``_record``."""

    def __reduce__(self):
        return (_record, ("unpickled",))


_CALLS: list[str] = []


def _record(what: str) -> str:
    _CALLS.append(what)
    return what


def test_pickled_object_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, "x": _Payload()}, path)
    with pytest.raises(WeightsError) as info:
        AdaFace(RunConfig(), path=path).load()
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "pickled Python objects" in message and "weights_only=True" in message and "_record" in message
    assert _CALLS == []


def test_mismatched_keys_name_the_key(tmp_path):
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in AdaFaceNet("ir_50").state_dict().items()}
    # zero-stride views: the file stores one number per tensor, yet every key and shape is right
    state = {k: torch.zeros((), dtype=dtype).expand(shape) for k, (shape, dtype) in shapes.items()}
    state["output_layer.3.weight_renamed"] = state.pop("output_layer.3.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)  # a plain state dict
    with pytest.raises(WeightsError) as info:
        AdaFace(RunConfig(), path=path).load()
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "missing keys output_layer.3.weight" in message
    assert "unexpected keys output_layer.3.weight_renamed" in message
    state["output_layer.3.weight"] = state.pop("output_layer.3.weight_renamed")[:, :100]
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"wrong shapes output_layer.3.weight \(512, 100\) != \(512, 25088\)"):
        AdaFace(RunConfig(), path=path).load()


def test_cvlface_safetensors_loads(tmp_path):
    from safetensors.torch import save_file

    saved = _random_ir50()
    path = tmp_path / "model.safetensors"
    save_file({"model.net." + k: v.contiguous() for k, v in saved.items()}, str(path))
    model = AdaFace(RunConfig(), path=path)
    model.load()
    assert model.net is not None and model.net.arch == "ir_50"
    assert all(torch.equal(v, saved[k]) for k, v in model.net.state_dict().items())
    path.unlink()  # 175 MB


def test_wrong_arch_or_garbage_is_a_weights_error(ckpt_path, tmp_path):
    with pytest.raises(WeightsError, match="is an AdaFace ir_50, but arch=ir_101"):
        AdaFace(RunConfig(), path=ckpt_path, arch="ir_101").load()
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        AdaFace(RunConfig(), path=junk).load()


def test_missing_weights_is_one_line_saying_what_to_fetch(tmp_path):
    for run, options in [(RunConfig(weights_dir=tmp_path), {}), (RunConfig(), {}),
                         (RunConfig(), {"path": tmp_path / "nope.ckpt"})]:
        with pytest.raises(WeightsError) as info:
            AdaFace(run, **options).load()
        message = str(info.value)
        assert "\n" not in message
        assert "github.com/mk-minchul/AdaFace" in message and "--weights-dir" in message
        assert "minchul/cvlface_adaface_ir101_webface12m" in message
    with pytest.raises(WeightsError, match=f"adaface_ir50_ms1mv2.ckpt in {tmp_path}"):
        AdaFace(RunConfig(weights_dir=tmp_path), arch="ir_50").load()


def test_options_are_checked():
    with pytest.raises(ConfigError, match="unknown option"):
        AdaFace(RunConfig(), colour="bgr")
    with pytest.raises(ConfigError, match="arch must be one of"):
        AdaFace(RunConfig(), arch="ir_18")
    assert AdaFace(RunConfig(), path="x.ckpt").config.path == Path("x.ckpt")


def test_registered_through_a_fresh_plugin_manager():
    pm, errors = make_plugin_manager(entry_points=False, plugins=[adaface])
    assert errors == []
    spec = Registry.from_plugin_manager(pm).get("face_model", "adaface")
    assert spec.factory is AdaFace and spec.summary
    assert spec.capabilities["metric"] == "cosine" and spec.capabilities["input_size"] == 112
    assert spec.capabilities["differentiable"] is True and spec.capabilities["threshold"] == 0.7
