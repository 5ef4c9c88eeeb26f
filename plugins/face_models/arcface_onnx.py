"""insightface ArcFace (IResNet) recognition models: scored in onnxruntime, attacked in PyTorch.

insightface ships its recognition networks only as ONNX files (buffalo_l ``w600k_r50.onnx`` is an
IResNet-50, antelopev2 ``glintr100.onnx`` an IResNet-100). onnxruntime gives no gradients, so the
same weights are rebuilt as a PyTorch IResNet (insightface's ``recognition/arcface_torch/backbones/
iresnet.py``) by walking the ONNX graph from its input and copying every initializer into the module
slot the graph uses it for. The walk infers the depth and widths, so any insightface IResNet works.
Convolutions whose batch norm the exporter folded in (the shipped files) or left as a separate
``BatchNormalization`` node (both are handled: the latter is folded here) load into the same module.

``embed`` is the differentiable PyTorch network; ``embed_onnx`` runs the untouched file in
onnxruntime (one session, made in ``load``) and is what a scorer should trust. Both take chips in
[0, 1] RGB and apply insightface's own input convention: RGB, ``(x * 255 - 127.5) / 127.5``
(``ArcFaceONNX``: ``input_mean = input_std = 127.5`` for graphs without a leading Sub/Mul, and
``cv2.dnn.blobFromImages(..., swapRB=True)`` on BGR photos, i.e. the network sees RGB).

Example::

    model = ArcFaceONNX(RunConfig(weights_dir=Path("models"))); model.load()
    chips = model.align(photos, faces)                 # [N,3,112,112] in [0,1]
    d = model.distance(model.embed(chips), ref)        # 1 - cosine; same person below 0.8
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardkit import hookimpl
from guardkit.align import ARCFACE_TEMPLATE_112, similarity_align
from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.types import DistanceMetric, Face, LandmarkScheme
from guardkit.weights import locate_insightface_file

CHIP_SIZE = 112
INPUT_MEAN = 127.5
INPUT_STD = 127.5
BN_EPS = 1e-5

#: Where insightface's model packs put each file (``~/.insightface/models/<pack>/<file>``).
KNOWN_FILES = {"w600k_r50.onnx": "buffalo_l", "glintr100.onnx": "antelopev2"}
_MAX_FILE_BYTES = 1 << 30  # glintr100.onnx is ~250 MB; protobuf cannot hold more than 2 GB anyway


# ---------------------------------------------------------------------------------------------
# The architecture (insightface recognition/arcface_torch/backbones/iresnet.py)
# ---------------------------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=bias)


def _bn_or_identity(channels: int, fused: bool) -> nn.Module:
    return nn.Identity() if fused else nn.BatchNorm2d(channels, eps=BN_EPS)


class IBasicBlock(nn.Module):
    """``bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3 (+ downsample(x))``, no activation after."""

    def __init__(self, cin: int, cout: int, stride: int, *, fused: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = _conv3x3(cin, cout, 1, fused)
        self.bn2 = _bn_or_identity(cout, fused)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride, fused)
        self.bn3 = _bn_or_identity(cout, fused)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=fused), _bn_or_identity(cout, fused))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """insightface's IResNet. Input ``[N,3,112,112]`` normalised to [-1, 1]; output ``[N,embedding]``.

    ``layers``: blocks per stage ((3, 4, 14, 3) is r50, (3, 13, 30, 3) r100); ``widths``: channels per
    stage ((64, 128, 256, 512)). Every stage halves the size. ``fused=False`` is insightface's training
    layout (parameter names match its state dicts); ``fused=True`` is the layout of the exported ONNX
    files: each batch norm that follows a convolution (or the fc) is folded into it, so convs have a
    bias and those norms are ``Identity``.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding: int = 512,
        *,
        stem: int | None = None,
        fused: bool = False,
        size: int = CHIP_SIZE,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"IResNet needs one width per stage, got layers={layers} widths={widths}")
        stem = widths[0] if stem is None else stem
        self.layers, self.widths, self.embedding, self.stem = tuple(layers), tuple(widths), embedding, stem
        self.conv1 = _conv3x3(3, stem, 1, fused)
        self.bn1 = _bn_or_identity(stem, fused)
        self.prelu = nn.PReLU(stem)
        cin = stem
        for i, (count, width) in enumerate(zip(layers, widths)):
            blocks = [IBasicBlock(cin, width, 2, fused=fused)]
            blocks += [IBasicBlock(width, width, 1, fused=fused) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.dropout = nn.Dropout(p=0.0)
        spatial = size // 2 ** len(layers)
        self.fc = nn.Linear(cin * spatial * spatial, embedding)
        self.features: nn.Module = nn.Identity() if fused else nn.BatchNorm1d(embedding, eps=BN_EPS)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.layers))]

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# ---------------------------------------------------------------------------------------------
# The ONNX graph walk: initializers -> a fused IResNet
# ---------------------------------------------------------------------------------------------

_PASS_THROUGH = ("Identity", "Dropout")


def _passes_through(node: Any) -> bool:
    """Nodes that leave float32 values as they are (Dropout is the identity at inference)."""
    if node.op_type == "Cast":  # iresnet.py's ``x.float()`` before the fc exports as Cast(to=FLOAT)
        return int(_attr(node, "to", 0)) == 1
    return node.op_type in _PASS_THROUGH


class _GraphError(Exception):
    """The graph is not an insightface IResNet; the message says where it left the pattern."""


@dataclass
class _Conv:
    weight: np.ndarray
    bias: np.ndarray
    stride: int


@dataclass
class _Norm:
    scale: np.ndarray
    shift: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float


@dataclass
class _Block:
    bn1: _Norm
    conv1: _Conv
    prelu: np.ndarray
    conv2: _Conv
    downsample: _Conv | None


class _Graph:
    """Read-only view of an ONNX graph: constants (initializers, ``Constant`` nodes and constant
    ``Identity``/``Unsqueeze``/``Reshape`` of them) and who consumes each tensor."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.consts: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            if init.data_location == 1:  # onnx.TensorProto.EXTERNAL: weights outside the file
                raise _GraphError(f"initializer {init.name!r} is stored in an external file")
            self.consts[init.name] = numpy_helper.to_array(init)
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            self._fold_constant(node)
        self.outputs = {o.name for o in graph.output}

    def _fold_constant(self, node: Any) -> None:
        from onnx import helper, numpy_helper

        ins = list(node.input)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    self.consts[node.output[0]] = np.array(helper.get_attribute_value(attr))
        elif not ins or not all(name in self.consts for name in ins):
            return
        elif node.op_type == "Identity":
            self.consts[node.output[0]] = self.consts[ins[0]]
        elif node.op_type == "Unsqueeze":
            axes = self.consts[ins[1]].tolist() if len(ins) > 1 else _attr(node, "axes", [])
            value = self.consts[ins[0]]
            for axis in sorted(int(a) % (value.ndim + len(axes)) for a in axes):
                value = np.expand_dims(value, axis)
            self.consts[node.output[0]] = value
        elif node.op_type == "Reshape":
            self.consts[node.output[0]] = self.consts[ins[0]].reshape(self.consts[ins[1]].astype(np.int64))

    def const(self, node: Any, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or node.input[index] not in self.consts:
            raise _GraphError(f"{node.op_type} node {node.name!r} has no constant {what}")
        return np.asarray(self.consts[node.input[index]], dtype=np.float64)

    def next_nodes(self, tensor: str) -> list[Any]:
        """The nodes reading ``tensor``, looking through Identity, Dropout and float Cast nodes."""
        out = []
        for node in self.consumers.get(tensor, []):
            if _passes_through(node):
                out += self.next_nodes(node.output[0])
            else:
                out.append(node)
        return out

    def only(self, tensor: str, *ops: str) -> Any:
        nodes = self.next_nodes(tensor)
        if len(nodes) != 1 or nodes[0].op_type not in ops:
            found = ", ".join(n.op_type for n in nodes) or "nothing"
            raise _GraphError(f"expected {' or '.join(ops)} after tensor {tensor!r}, found {found}")
        return nodes[0]

    def out(self, node: Any) -> str:
        """``node``'s output, followed through pass-through chains to the name consumers use."""
        name = node.output[0]
        while True:
            nxt = self.consumers.get(name, [])
            if len(nxt) == 1 and _passes_through(nxt[0]) and name not in self.outputs:
                name = nxt[0].output[0]
            else:
                return name


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _read_norm(g: _Graph, node: Any) -> _Norm:
    return _Norm(
        g.const(node, 1, "scale"), g.const(node, 2, "bias"), g.const(node, 3, "mean"),
        g.const(node, 4, "variance"), float(_attr(node, "epsilon", 1e-5)),
    )  # fmt: skip


def _fold(conv: _Conv, norm: _Norm) -> _Conv:
    """``norm(conv(x))`` as one convolution (eval-mode batch norm is per-channel affine)."""
    k = norm.scale / np.sqrt(norm.var + norm.eps)
    return _Conv(conv.weight * k[:, None, None, None], (conv.bias - norm.mean) * k + norm.shift, conv.stride)


def _read_conv(g: _Graph, node: Any, kernel: int) -> tuple[_Conv, str]:
    """A Conv node (and the BatchNormalization right after it, if the exporter left one), folded."""
    weight = g.const(node, 1, "weight")
    if weight.ndim != 4 or weight.shape[2:] != (kernel, kernel):
        raise _GraphError(f"Conv {node.name!r} has weight {weight.shape}, expected a {kernel}x{kernel} kernel")
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    strides = list(_attr(node, "strides", [1, 1]))
    if (
        pads != [kernel // 2] * 4
        or len(set(strides)) != 1
        or int(_attr(node, "group", 1)) != 1
        or set(_attr(node, "dilations", [1, 1])) != {1}
        or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
    ):
        raise _GraphError(f"Conv {node.name!r} has pads {pads}, strides {strides}: not an IResNet convolution")
    bias = g.const(node, 2, "bias") if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[0])
    conv, out = _Conv(weight, bias, int(strides[0])), g.out(node)
    after = g.next_nodes(out)
    if len(after) == 1 and after[0].op_type == "BatchNormalization":
        conv, out = _fold(conv, _read_norm(g, after[0])), g.out(after[0])
    return conv, out


def _read_block(g: _Graph, x: str) -> tuple[_Block, str] | None:
    """One IBasicBlock starting at tensor ``x``, or ``None`` where the blocks end (the final bn2)."""
    nodes = g.next_nodes(x)
    norms = [n for n in nodes if n.op_type == "BatchNormalization"]
    if len(nodes) == 1:  # a block's input feeds two paths; one reader is the head's bn2
        return None
    convs = [n for n in nodes if n.op_type == "Conv"]
    adds = [n for n in nodes if n.op_type == "Add"]
    if len(norms) != 1 or len(nodes) != 2 or len(convs) + len(adds) != 1:
        found = ", ".join(n.op_type for n in nodes) or "nothing"
        raise _GraphError(f"expected a residual block (BatchNormalization + Add or Conv) at {x!r}, found {found}")
    bn1 = _read_norm(g, norms[0])
    conv1, y = _read_conv(g, g.only(g.out(norms[0]), "Conv"), 3)
    prelu_node = g.only(y, "PRelu")
    prelu = g.const(prelu_node, 1, "slope").reshape(-1)
    conv2, y = _read_conv(g, g.only(g.out(prelu_node), "Conv"), 3)
    downsample, skip = None, x
    if convs:
        downsample, skip = _read_conv(g, convs[0], 1)
    add = g.only(y, "Add")
    if sorted(add.input) != sorted([y, skip]):
        raise _GraphError(f"Add {add.name!r} does not join the block's two paths")
    return _Block(bn1, conv1, prelu, conv2, downsample), g.out(add)


def _read_head(g: _Graph, x: str) -> tuple[_Norm, np.ndarray, np.ndarray, _Norm | None]:
    """``bn2 -> flatten -> fc (Gemm, or MatMul + Add) -> features (BatchNormalization, optional)``."""
    bn2_node = g.only(x, "BatchNormalization")
    flat = g.only(g.out(bn2_node), "Flatten", "Reshape")
    if flat.op_type == "Flatten" and int(_attr(flat, "axis", 1)) != 1:
        raise _GraphError(f"Flatten {flat.name!r} is not over axis 1")
    fc = g.only(g.out(flat), "Gemm", "MatMul")
    if fc.op_type == "Gemm":
        if int(_attr(fc, "transA", 0)) != 0:
            raise _GraphError(f"Gemm {fc.name!r} transposes its input")
        weight = g.const(fc, 1, "weight") * float(_attr(fc, "alpha", 1.0))
        weight = weight if int(_attr(fc, "transB", 0)) else weight.T
        bias = g.const(fc, 2, "bias") * float(_attr(fc, "beta", 1.0)) if len(fc.input) > 2 else 0.0
        y = g.out(fc)
    else:
        weight = g.const(fc, 1, "weight").T
        add = g.only(g.out(fc), "Add")
        bias_name = [n for n in add.input if n in g.consts]
        if not bias_name:
            raise _GraphError(f"Add {add.name!r} after the fc MatMul has no constant bias")
        bias, y = np.asarray(g.consts[bias_name[0]], dtype=np.float64), g.out(add)
    bias = np.broadcast_to(np.asarray(bias, dtype=np.float64).reshape(-1), (weight.shape[0],))
    features = None
    after = g.next_nodes(y)
    if after and after[0].op_type == "BatchNormalization":
        features, y = _read_norm(g, after[0]), g.out(after[0])
    if y not in g.outputs or g.next_nodes(y):
        raise _GraphError(f"the embedding {y!r} is not the graph's only output")
    return _read_norm(g, bn2_node), weight, bias, features


def _input_of(graph: Any) -> Any:
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise _GraphError(f"expected one image input, found {len(inputs)}")
    return inputs[0]


def _check_input(value_info: Any) -> int | None:
    """Check the input is ``[N,3,112,112]`` float; returns the batch size when the graph fixes it."""
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or shape[1:] != [3, CHIP_SIZE, CHIP_SIZE]:
        raise _GraphError(f"input {value_info.name!r} has shape {shape}, expected [N, 3, 112, 112]")
    if value_info.type.tensor_type.elem_type != 1:  # onnx.TensorProto.FLOAT
        raise _GraphError(f"input {value_info.name!r} is not float32")
    return shape[0] or None


def _set(param: Tensor, value: np.ndarray, what: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise _GraphError(f"{what} has shape {tuple(value.shape)}, the network needs {tuple(param.shape)}")
    param.data.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(param.dtype))


def _set_conv(conv: nn.Conv2d, value: _Conv, what: str) -> None:
    _set(conv.weight, value.weight, f"{what} weight")
    assert conv.bias is not None
    _set(conv.bias, value.bias, f"{what} bias")


def _set_norm(bn: nn.Module, value: _Norm, what: str) -> None:
    assert isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))
    _set(bn.weight, value.scale, f"{what} scale")
    _set(bn.bias, value.shift, f"{what} bias")
    _set(bn.running_mean, value.mean, f"{what} mean")
    _set(bn.running_var, value.var, f"{what} variance")
    bn.eps = value.eps


def iresnet_from_graph(graph: Any) -> tuple[IResNet, int | None]:
    """Walk an insightface IResNet ONNX graph from its input and build the fused :class:`IResNet`.

    Returns the network (CPU, eval, frozen) and the batch size the graph fixes (``None``: dynamic).
    Raises ``_GraphError`` where the graph leaves the IResNet pattern.
    """
    g = _Graph(graph)
    image = _input_of(graph)
    batch = _check_input(image)
    stem, x = _read_conv(g, g.only(image.name, "Conv"), 3)
    prelu_node = g.only(x, "PRelu")
    stem_prelu = g.const(prelu_node, 1, "slope").reshape(-1)
    x = g.out(prelu_node)
    stages: list[list[_Block]] = []
    while (found := _read_block(g, x)) is not None:
        block, x = found
        if block.downsample is not None:
            if block.conv2.stride != 2 or block.downsample.stride != 2:
                raise _GraphError("a stage's first block does not halve the size")
            stages.append([])
        elif not stages or block.conv2.stride != 1:
            raise _GraphError("a block without downsample changes the size, or the first block has none")
        stages[-1].append(block)
        if sum(len(s) for s in stages) > 1000:
            raise _GraphError("more than 1000 residual blocks")
    bn2, fc_w, fc_b, features = _read_head(g, x)
    if features is not None:  # fold the BatchNorm1d into the fc: the fused layout's ``features`` is Identity
        k = features.scale / np.sqrt(features.var + features.eps)
        fc_w, fc_b = fc_w * k[:, None], (fc_b - features.mean) * k + features.shift
    if not stages or CHIP_SIZE % 2 ** len(stages):
        raise _GraphError(f"{len(stages)} stages do not fit a 112 px input")

    widths = [s[0].conv2.weight.shape[0] for s in stages]
    net = IResNet([len(s) for s in stages], widths, fc_w.shape[0], stem=stem.weight.shape[0], fused=True)
    with torch.no_grad():
        _set_conv(net.conv1, stem, "stem conv")
        _set(net.prelu.weight, stem_prelu, "stem PReLU")
        for i, (blocks, modules) in enumerate(zip(stages, net.stages())):
            for j, (value, module) in enumerate(zip(blocks, modules)):
                where = f"layer{i + 1}.{j}"
                _set_norm(module.bn1, value.bn1, f"{where}.bn1")
                _set_conv(module.conv1, value.conv1, f"{where}.conv1")
                _set(module.prelu.weight, value.prelu, f"{where}.prelu")
                _set_conv(module.conv2, value.conv2, f"{where}.conv2")
                if (value.downsample is None) != (module.downsample is None):
                    raise _GraphError(f"{where}: downsample does not match the channel counts")
                if value.downsample is not None:
                    _set_conv(module.downsample[0], value.downsample, f"{where}.downsample")
        _set_norm(net.bn2, bn2, "bn2")
        _set(net.fc.weight, fc_w, "fc weight")
        _set(net.fc.bias, fc_b, "fc bias")
    net.eval().requires_grad_(False)
    return net, batch


def load_arcface_onnx(path: str | Path) -> tuple[Any, IResNet, int | None]:
    """``onnx.load`` an insightface recognition file (no code runs from it) and rebuild it in torch.

    Returns ``(model_proto, net, fixed_batch)``; a one-line ``WeightsError`` naming the file otherwise.
    """
    import onnx

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the ArcFace ONNX model ({exc.strerror or exc})") from exc
    if size > _MAX_FILE_BYTES:
        raise WeightsError(f"{path}: too large for an ArcFace ONNX model ({size} bytes)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: not an ONNX file
        raise WeightsError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    try:
        net, batch = iresnet_from_graph(proto.graph)
    except _GraphError as exc:
        raise WeightsError(f"{path}: not an insightface IResNet recognition model ({exc})") from exc
    except (ValueError, TypeError, IndexError) as exc:
        raise WeightsError(f"{path}: malformed ONNX tensors ({type(exc).__name__}: {exc})") from exc
    return proto, net, batch


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArcFaceConfig:
    """``path``: the ONNX file (overrides the lookup). ``file``: the file name looked up in
    ``RunConfig.weights_dir`` and then in ``~/.insightface/models/<pack>/`` (read only).
    ``pack``: insightface's model pack holding ``file`` (derived for the known files)."""

    path: str | None = None
    file: str = "w600k_r50.onnx"
    pack: str | None = None


class ArcFaceONNX:
    """insightface ArcFace (IResNet-50/100 ONNX). Metric: ``1 - cosine``; same person below 0.8.

    ``embed`` (PyTorch, differentiable) and ``embed_onnx`` (onnxruntime, the file itself) agree to
    float rounding. The PyTorch network runs in float32 on the run's device.
    """

    metric: ClassVar[DistanceMetric] = "cosine"
    #: Distance ``1 - cos``. insightface's own verification demo (web-demos/src_recognition/main.py,
    #: for buffalo_l's w600k_r50 via ArcFaceONNX.compute_sim) says "NOT the same person" below cosine
    #: similarity 0.2, "LIKELY" in [0.2, 0.28) and "ARE the same person" from 0.28. We take the
    #: lenient end, similarity 0.2 (distance 0.8), so a photo counts as protected only once insightface
    #: itself would call the pair different people.
    threshold: ClassVar[float] = 0.8
    input_size: ClassVar[int] = CHIP_SIZE
    differentiable: ClassVar[bool] = True
    schemes: ClassVar[tuple[LandmarkScheme, ...]] = ("arcface5", "dlib5")

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        try:
            self.config = ArcFaceConfig(**options)
        except TypeError as exc:
            raise ConfigError(f"face model 'arcface': bad options {sorted(options)} ({exc})") from exc
        self.run = run or RunConfig()
        self.net: IResNet | None = None
        self.session: Any = None
        self.path: Path | None = None
        self._batch: int | None = None

    def weights_path(self) -> Path:
        if self.config.path is not None:
            path = Path(self.config.path).expanduser()
            if not path.is_file():
                raise WeightsError(f"missing ArcFace weight file {path}: pass the path of an insightface "
                                   f"recognition .onnx (e.g. buffalo_l's w600k_r50.onnx)")
            return path
        pack = self.config.pack or KNOWN_FILES.get(self.config.file)
        return locate_insightface_file(self.config.file, pack, self.run.weights_dir, "ArcFace")

    @classmethod
    def random(cls, run: RunConfig | None = None, *, seed: int = 0, layers: tuple[int, ...] = (3, 4, 14, 3),
               **options: Any) -> "ArcFaceONNX":
        """IResNet (default: the buffalo_l IResNet-50 layout) with seeded random weights, loaded: for
        benchmarks and tests, where timing does not depend on weight values. ``embed_onnx`` is unavailable."""
        part = cls(run, **options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = IResNet(layers, fused=True)
        part.net = net.to(part.run.torch_device()).eval().requires_grad_(False)
        return part

    def load(self) -> None:
        if self.net is not None:
            return
        path = self.weights_path()
        _, net, batch = load_arcface_onnx(path)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise WeightsError("face model 'arcface' needs onnxruntime: pip install onnxruntime") from exc
        device = self.run.torch_device()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if self.run.threads:
            options.intra_op_num_threads = self.run.threads
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = (str(exc).strip().splitlines() or [""])[0]
            raise WeightsError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {first})") from exc
        self.providers = session.get_providers()  # CUDA may have fallen back to CPU: this says what runs
        self.session, self.path, self._batch = session, path, batch
        self.net = net.to(device)

    def _loaded(self) -> IResNet:
        if self.net is None:
            self.load()
        assert self.net is not None
        return self.net

    @staticmethod
    def normalize(chips: Tensor) -> Tensor:
        """[0,1] RGB chips -> the network's input: ``(x * 255 - 127.5) / 127.5``."""
        return (chips * 255.0 - INPUT_MEAN) / INPUT_STD

    def _check_chips(self, chips: Tensor) -> None:
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ConfigError(f"arcface embed expects chips [N,3,112,112], got {tuple(chips.shape)}")

    def align(self, images: Tensor, faces: Sequence[Face]) -> Tensor:
        """Chips [N,3,112,112] in [0,1]: insightface's 5-point similarity warp (``norm_crop``), bilinear."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"align expects images [B,3,H,W], got {tuple(images.shape)}")
        for face in faces:
            if face.scheme not in self.schemes:
                raise ConfigError(f"face model 'arcface' cannot align {face.scheme} landmarks")
            if not 0 <= face.image_index < images.shape[0]:
                raise ConfigError(f"face image_index {face.image_index} outside the batch of {images.shape[0]}")
        return similarity_align(images, faces, ARCFACE_TEMPLATE_112, CHIP_SIZE)

    def embed(self, chips: Tensor) -> Tensor:
        """Chips [N,3,112,112] in [0,1] -> raw embeddings [N,512] (PyTorch, differentiable)."""
        self._check_chips(chips)
        net = self._loaded()
        return net(self.normalize(chips.to(net.fc.weight.device, torch.float32)))

    @torch.no_grad()
    def embed_onnx(self, chips: Tensor) -> Tensor:
        """Chips [N,3,112,112] in [0,1] -> raw embeddings [N,512] from onnxruntime (no gradients)."""
        self._check_chips(chips)
        self._loaded()
        x = self.normalize(chips.detach().float()).cpu().numpy()
        name = self.session.get_inputs()[0].name
        step = self._batch or max(len(x), 1)
        outs = []
        for start in range(0, len(x), step):
            part = x[start : start + step]
            if self._batch and len(part) < step:  # a graph with a fixed batch: pad the last chunk
                part = np.concatenate([part, np.zeros((step - len(part), *part.shape[1:]), part.dtype)])
            outs.append(self.session.run(None, {name: np.ascontiguousarray(part)})[0][: len(x) - start])
        if not outs:
            return chips.new_zeros((0, self._loaded().embedding), dtype=torch.float32)
        return torch.from_numpy(np.concatenate(outs).astype(np.float32)).to(chips.device)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return 1 - F.cosine_similarity(a, b, dim=-1)


@hookimpl
def guardkit_register_face_models(register: Any) -> None:
    register("arcface", ArcFaceONNX, summary="insightface ArcFace IResNet (buffalo_l w600k_r50 ONNX), PyTorch rebuild")
