"""An insightface ArcFace ONNX file rebuilt as a PyTorch :class:`IResNet`, so that attacks get gradients.

The ONNX graph is walked from its input, and every initializer is copied into the module slot the
graph uses it for. The walk infers the depth and widths, so any insightface IResNet works (buffalo_l
``w600k_r50.onnx`` is an IResNet-50, antelopev2 ``glintr100.onnx`` an IResNet-100). Convolutions whose
batch norm the exporter folded in (the shipped files) or left as a separate ``BatchNormalization``
node (folded here) load into the same module. ``onnx`` is imported only when a file is read.

Example: ``proto, net, fixed_batch = load_arcface_onnx("w600k_r50.onnx")``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from guardkit.errors import WeightsError

from .arcface_iresnet import CHIP_SIZE, IResNet

_MAX_FILE_BYTES = 1 << 30  # glintr100.onnx is ~250 MB; protobuf cannot hold more than 2 GB anyway


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
