"""insightface parts on tiny real ONNX exports: face model ``arcface`` (IResNet, onnxruntime vs its
PyTorch rebuild) and face finder ``insightface`` (SCRFD decoding, letterbox and NMS)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from guardkit.config import RunConfig
from guardkit.errors import WeightsError
from guardkit.plugins.face_finders import scrfd
from guardkit.plugins.face_finders.scrfd import ScrfdFaceFinder, letterbox, nms, resize_bilinear
from guardkit.plugins.face_models import arcface_onnx
from guardkit.plugins.face_models.arcface_iresnet import IResNet
from guardkit.plugins.face_models.arcface_onnx import ArcFaceONNX
from guardkit.registry import Registry, make_plugin_manager
from guardkit.testing import FaceModelContract
from guardkit.types import Face

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def _export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], **kw) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=13,
                          input_names=["input.1"], output_names=outputs, **kw)  # fmt: skip
    return path


def tiny_iresnet(seed: int = 0) -> IResNet:
    """insightface's training layout, small: random weights, non-trivial batch-norm statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = IResNet((1, 2, 1, 1), (8, 8, 16, 16), 32, fused=False)  # torch's default (scaled) init
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.4)
    return net.eval()


def export_iresnet(net: IResNet, path: Path, **kw) -> Path:
    """As insightface exported its models: eval mode, batch norms after convs folded, dynamic batch."""
    return _export(net, torch.rand(1, 3, 112, 112), path, ["fc1"],
                   dynamic_axes={"input.1": {0: "N"}, "fc1": {0: "N"}}, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[IResNet, Path]:
    net = tiny_iresnet()
    return net, export_iresnet(net, tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx")


@pytest.fixture(scope="module")
def obama() -> tuple[torch.Tensor, list[Face]]:
    pytest.importorskip("dlib")
    from guardkit.plugins.face_finders.dlib_finder import DlibFaceFinder

    image = np.asarray(Image.open(FACES / "obama_small.jpg").convert("RGB"))
    faces = DlibFaceFinder().find(image)
    assert faces and faces[0].scheme == "dlib5"
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0, faces[:1]


def _model(path: Path) -> ArcFaceONNX:
    model = ArcFaceONNX(RunConfig(), path=str(path))
    model.load()
    return model


# ---------------------------------------------------------------------------------------------
# arcface
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["folded", "unfolded"])
def test_torch_rebuild_matches_onnxruntime(tmp_path, tiny_onnx, layout):
    net, path = tiny_onnx
    if layout == "unfolded":  # batch norms left as separate nodes: the loader folds them itself
        path = export_iresnet(net, tmp_path / "unfolded.onnx", training=torch.onnx.TrainingMode.PRESERVE)
    model = _model(path)
    chips = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    ours, theirs = model.embed(chips), model.embed_onnx(chips)
    with torch.no_grad():
        source = net(model.normalize(chips))
    assert ours.shape == theirs.shape == (3, 32) and 0.1 < ours.abs().max() < 100  # well scaled
    assert (ours - theirs).abs().max() < 1e-4, (ours - theirs).abs().max()
    assert (ours - source).abs().max() < 1e-4
    assert model.net is not None and model.net.layers == (1, 2, 1, 1) and model.net.widths == (8, 8, 16, 16)
    assert model.providers == ["CPUExecutionProvider"]


def test_session_is_made_once(tiny_onnx):
    model = _model(tiny_onnx[1])
    session = model.session
    model.load()
    model.embed_onnx(torch.rand(1, 3, 112, 112))
    assert model.session is session


def test_fixed_batch_graph_runs_in_chunks(tmp_path):
    net = tiny_iresnet(seed=3)
    path = _export(net, torch.rand(1, 3, 112, 112), tmp_path / "fixed.onnx", ["fc1"])  # batch fixed at 1
    model = _model(path)
    chips = torch.rand(3, 3, 112, 112)
    assert (model.embed(chips) - model.embed_onnx(chips)).abs().max() < 1e-4


def test_gradients_reach_the_photo_and_scores_agree(obama, tiny_onnx):
    images, faces = obama
    model = _model(tiny_onnx[1])
    x = images.clone().requires_grad_(True)
    chips = model.align(x, faces)
    emb = model.embed(chips)
    (grad,) = torch.autograd.grad(emb.pow(2).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (emb.detach() - model.embed_onnx(chips)).abs().max() < 1e-4
    # the chip is the face: the eyes land on the template's eye row, not on background
    assert chips.std() > 0.05


class TestArcFaceContract(FaceModelContract):
    @pytest.fixture(autouse=True)
    def _weights(self, tiny_onnx, obama):
        self.path, self.batch = tiny_onnx[1], obama

    def make_model(self):
        return _model(self.path)

    def make_batch(self):
        images, faces = self.batch
        shifted = Face(0, faces[0].box, tuple((x + 3.0, y - 2.0) for x, y in faces[0].landmarks), "dlib5")
        return images, [faces[0], shifted]


def test_capabilities():
    assert ArcFaceONNX.metric == "cosine" and ArcFaceONNX.input_size == 112 and ArcFaceONNX.differentiable
    assert set(ArcFaceONNX.schemes) == {"arcface5", "dlib5"}
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[math.cos(1.0), math.sin(1.0)]])
    assert ArcFaceONNX(RunConfig()).distance(a, b).item() == pytest.approx(1 - math.cos(1.0))


def test_missing_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.insightface of this machine's user
    with pytest.raises(WeightsError) as err:
        ArcFaceONNX(RunConfig(weights_dir=tmp_path)).load()
    msg = str(err.value)
    assert "\n" not in msg and "w600k_r50.onnx" in msg and "buffalo_l" in msg and "--weights-dir" in msg
    with pytest.raises(WeightsError, match="nope.onnx") as err:
        ArcFaceONNX(RunConfig(), path=str(tmp_path / "nope.onnx")).load()
    assert "\n" not in str(err.value)


def test_weights_dir_lookup(tmp_path, tiny_onnx):
    (tmp_path / "w600k_r50.onnx").write_bytes(tiny_onnx[1].read_bytes())
    model = ArcFaceONNX(RunConfig(weights_dir=tmp_path))
    model.load()
    assert model.path == tmp_path / "w600k_r50.onnx"


@pytest.mark.parametrize("content", [b"\x00garbage\xff" * 50, b""])
def test_corrupt_file_names_the_file(tmp_path, content):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        _model(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_foreign_graph_is_refused(tmp_path):
    path = _export(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 112 * 112, 8)),
                   torch.rand(1, 3, 112, 112), tmp_path / "other.onnx", ["out"])  # fmt: skip
    with pytest.raises(WeightsError, match="not an insightface IResNet") as err:
        _model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_wrong_input_size_is_refused(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten())
    path = _export(net, torch.rand(1, 3, 96, 96), tmp_path / "small.onnx", ["out"])
    with pytest.raises(WeightsError, match=r"expected \[N, 3, 112, 112\]"):
        _model(path)


def test_registered_under_arcface():
    pm, errors = make_plugin_manager(entry_points=False, plugins=[arcface_onnx, scrfd])
    registry = Registry.from_plugin_manager(pm, errors)
    assert not errors
    spec = registry.get("face_model", "arcface")
    assert spec.factory is ArcFaceONNX and spec.capabilities["metric"] == "cosine"
    finder = registry.get("face_finder", "insightface")
    assert finder.factory is ScrfdFaceFinder and finder.capabilities["scheme"] == "arcface5"
    # the weights each declares for `guardkit models` are the files it loads by default
    default = arcface_onnx.ArcFaceConfig().file
    assert [(w.name, w.where, w.pack) for w in spec.weights] == [
        (default, "insightface", arcface_onnx.KNOWN_FILES[default])]
    assert [(w.name, w.where, w.pack) for w in finder.weights] == [
        (scrfd.ScrfdConfig().file, "insightface", "buffalo_l")]


# ---------------------------------------------------------------------------------------------
# insightface (SCRFD)
# ---------------------------------------------------------------------------------------------

SIZE = 640
STRIDES = (8, 16, 32)


class FixedHeads(nn.Module):
    """SCRFD's output signature (scores, boxes, landmarks for strides 8/16/32; 2 anchors per cell)
    from a real conv on the input plus per-anchor biases the test sets: what the heads say is known."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Conv2d(3, 1, 3, stride=8, padding=1)
        for s in STRIDES:
            k = (SIZE // s) ** 2 * 2
            self.register_buffer(f"logit{s}", torch.full((k, 1), -20.0))
            self.register_buffer(f"box{s}", torch.ones(k, 4))
            self.register_buffer(f"kps{s}", torch.zeros(k, 10))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        zero = self.probe(x).mean() * 0.0
        return (
            [torch.sigmoid(getattr(self, f"logit{s}") + zero) for s in STRIDES]
            + [getattr(self, f"box{s}") + zero for s in STRIDES]
            + [getattr(self, f"kps{s}") + zero for s in STRIDES]
        )


def _anchor(stride: int, row: int, col: int, a: int) -> int:
    return (row * (SIZE // stride) + col) * 2 + a


def _plant(heads: FixedHeads, stride: int, row: int, col: int, a: int, score: float, dist, kps) -> np.ndarray:
    """Make one anchor fire; returns its expected (box[4], kps[10]) in network pixels."""
    i = _anchor(stride, row, col, a)
    getattr(heads, f"logit{stride}")[i] = math.log(score / (1 - score))
    getattr(heads, f"box{stride}")[i] = torch.tensor(dist, dtype=torch.float32)
    getattr(heads, f"kps{stride}")[i] = torch.tensor(kps, dtype=torch.float32)
    cx, cy = col * stride, row * stride
    d = np.asarray(dist) * stride
    box = [cx - d[0], cy - d[1], cx + d[2], cy + d[3]]
    points = (np.asarray(kps).reshape(5, 2) * stride + (cx, cy)).reshape(-1)
    return np.concatenate([box, points])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    heads = FixedHeads().eval()
    kps = [-1.0, -1.0, 1.0, -1.0, 0.0, 0.0, -0.8, 1.2, 0.8, 1.2]
    big = _plant(heads, 16, 12, 10, 1, 0.9, (3, 4, 3, 5), kps)       # 96 x 144 px face
    _plant(heads, 8, 24, 20, 0, 0.8, (6, 8, 6, 10), [0.0] * 10)      # the same face again, lower: NMS drops it
    small = _plant(heads, 32, 2, 2, 0, 0.95, (1, 1, 1, 1), kps)      # 64 x 64 px face, best score
    _plant(heads, 32, 15, 15, 1, 0.4, (1, 1, 1, 1), kps)              # below the 0.5 threshold
    path = _export(heads, torch.zeros(1, 3, SIZE, SIZE), tmp_path_factory.mktemp("scrfd") / "det_10g.onnx",
                   [f"{k}{s}" for k in ("score", "bbox", "kps") for s in STRIDES])  # fmt: skip
    return path, big, small


def test_scrfd_decodes_planted_faces_into_photo_coordinates(planted):
    path, big, small = planted
    finder = ScrfdFaceFinder(RunConfig(), path=str(path))
    photo = np.full((480, 320, 3), 100, dtype=np.uint8)  # portrait: letterboxed to 426 x 640, scale 4/3
    faces = finder.find(photo)
    assert len(faces) == 2  # the duplicate is suppressed, the weak one is under threshold
    scale = 640 / 480
    for face, expected, score in zip(faces, (big, small), (0.9, 0.95)):  # biggest first, not best first
        assert face.scheme == "arcface5" and face.image_index == 0
        assert face.score == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(face.box, expected[:4] / scale, atol=1e-3)
        np.testing.assert_allclose(np.asarray(face.landmarks).reshape(-1), expected[4:] / scale, atol=1e-3)
    assert faces[0].box == pytest.approx((84.0, 96.0, 156.0, 204.0), abs=1e-3)


def test_scrfd_landscape_scale(planted):
    path, big, _ = planted
    faces = ScrfdFaceFinder(RunConfig(), path=str(path)).find(np.zeros((200, 800, 3), dtype=np.uint8))
    scale = int(640 * 200 / 800) / 200  # width fills 640, height int(160)
    np.testing.assert_allclose(faces[0].box, big[:4] / scale, atol=1e-3)


def test_letterbox_normalises_and_pads_top_left():
    photo = np.full((100, 50, 3), (255, 0, 127), dtype=np.uint8)
    blob, scale = letterbox(photo, 64, 64)
    assert blob.shape == (1, 3, 64, 64) and blob.dtype == np.float32 and scale == pytest.approx(0.64)
    assert blob[0, :, :, :32].reshape(3, -1).std(axis=1).max() == 0  # the photo, resized to 32 x 64
    np.testing.assert_allclose(blob[0, :, 0, 0], (np.array([255, 0, 127]) - 127.5) / 128)
    np.testing.assert_allclose(blob[0, :, :, 32:], -127.5 / 128)  # zero padding on the right


def test_resize_bilinear_is_half_pixel():
    img = np.arange(4, dtype=np.uint8).reshape(1, 4, 1).repeat(3, axis=2) * 40  # 0, 40, 80, 120
    out = resize_bilinear(img, 2, 1)[0, :, 0]
    assert out.tolist() == [20, 100]  # cv2.INTER_LINEAR samples at 0.5 and 2.5


def test_nms_keeps_best_of_overlaps():
    dets = np.array([[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.8], [50, 50, 60, 60, 0.7], [0, 0, 10, 2, 0.95]])
    assert nms(dets, 0.4) == [3, 0, 2]


def test_scrfd_missing_and_wrong_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        ScrfdFaceFinder(RunConfig(weights_dir=tmp_path)).load()
    assert "\n" not in str(err.value) and "det_10g.onnx" in str(err.value) and "buffalo_l" in str(err.value)
    bad = tmp_path / "det_10g.onnx"
    bad.write_bytes(b"not onnx at all")
    with pytest.raises(WeightsError, match="det_10g.onnx") as err:
        ScrfdFaceFinder(RunConfig(weights_dir=tmp_path)).load()
    assert "\n" not in str(err.value)
    other = _export(nn.Conv2d(3, 2, 3), torch.zeros(1, 3, 64, 64), tmp_path / "conv.onnx", ["out"])
    with pytest.raises(WeightsError, match="9 or 15 outputs"):
        ScrfdFaceFinder(RunConfig(), path=str(other)).load()


def test_float_cast_before_fc_is_looked_through(tmp_path, tiny_onnx):
    """iresnet.py's ``fc(x.float() if fp16 else x)`` can leave a Cast(to=FLOAT) in an export."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(tiny_onnx[1]))
    nodes = list(proto.graph.node)
    at, gemm = next((i, n) for i, n in enumerate(nodes) if n.op_type == "Gemm")
    cast = helper.make_node("Cast", [gemm.input[0]], ["as_float"], to=onnx.TensorProto.FLOAT)
    gemm.input[0] = "as_float"
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[:at] + [cast] + nodes[at:])
    onnx.save(proto, str(tmp_path / "cast.onnx"))
    model = _model(tmp_path / "cast.onnx")
    chips = torch.rand(2, 3, 112, 112)
    assert (model.embed(chips) - model.embed_onnx(chips)).abs().max() < 1e-4
