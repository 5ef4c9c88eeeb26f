"""A small, bounded reader of frozen TensorFlow GraphDef files (protobuf wire format), without TensorFlow.

It reads what a frozen inference graph holds: each node's name, op, inputs and attributes, and the
``Const`` tensors as numpy arrays (float32, int32, int64). Fields it does not know are skipped. Every
length is checked against the end of the message that holds it, so a corrupt or truncated file
raises a one-line ``WeightsError`` naming the file and never allocates more than the file's size.

Field numbers (tensorflow/core/framework/*.proto): GraphDef ``node=1``; NodeDef ``name=1 op=2 input=3
attr=5`` (``map<string, AttrValue>``: entries ``key=1 value=2``); AttrValue ``list=1 s=2 i=3 f=4 b=5
type=6 shape=7 tensor=8``; TensorProto ``dtype=1 tensor_shape=2 tensor_content=4 float_val=5
int_val=7 int64_val=10``; TensorShapeProto ``dim=2`` (``size=1``).

Example::

    graph = read_graph("graph_final.pb")
    w = graph.const("InceptionResnetV1/Conv2d_1a_3x3/weights")   # np.float32, HWIO
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardkit.errors import WeightsError

__all__ = ["TFGraph", "TFNode", "TFTensor", "parse_graph", "read_graph"]

MAX_GRAPH_BYTES = 1 << 30
_MAX_DEPTH = 8  # GraphDef > NodeDef > attr entry > AttrValue > list > TensorProto > shape > dim
#: TensorFlow DataType -> numpy: DT_FLOAT, DT_INT32, DT_INT64
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 3: np.dtype("<i4"), 9: np.dtype("<i8")}


class _Corrupt(Exception):
    """Raised inside the reader; turned into a one-line WeightsError naming the file."""


@dataclass(frozen=True)
class TFTensor:
    """A TensorProto, not yet converted: ``content`` (raw little-endian bytes) or the ``*_val`` fields."""

    dtype: int
    shape: tuple[int, ...]
    content: memoryview | None = None
    values: tuple[float | int, ...] = ()

    def numpy(self) -> np.ndarray:
        """The tensor as a numpy array of its dtype (float32 / int32 / int64)."""
        if self.dtype not in DTYPES:
            raise _Corrupt(f"tensor dtype {self.dtype} is not supported (float32, int32, int64 are)")
        if any(d < 0 for d in self.shape):
            raise _Corrupt(f"tensor shape {self.shape} is not fully known")
        dtype = DTYPES[self.dtype]
        count = int(np.prod(self.shape, dtype=np.int64))
        if self.content is not None and len(self.content):
            if len(self.content) != count * dtype.itemsize:
                raise _Corrupt(f"tensor content is {len(self.content)} bytes, shape {self.shape} needs "
                               f"{count * dtype.itemsize}")
            values = np.frombuffer(self.content, dtype=dtype)
            return values.astype(dtype.newbyteorder("="), copy=True).reshape(self.shape)
        if len(self.values) > count:
            raise _Corrupt(f"tensor has {len(self.values)} values for shape {self.shape}")
        if count and not self.values:
            return np.zeros(self.shape, dtype=dtype.newbyteorder("="))
        # TensorFlow fills a short *_val list with its last value (a splat constant holds one value)
        out = np.full(count, self.values[-1] if self.values else 0, dtype=dtype.newbyteorder("="))
        out[: len(self.values)] = self.values
        return out.reshape(self.shape)


@dataclass(frozen=True)
class TFNode:
    """One NodeDef. ``attrs`` values: bytes (s), int (i, type), float (f), bool (b), a shape as a tuple
    of ints (-1: unknown), a :class:`TFTensor`, or a list of those (AttrValue.list)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TFGraph:
    """The nodes of a GraphDef in file order, and a lookup by name."""

    source: str
    nodes: list[TFNode]
    by_name: dict[str, TFNode] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {n.name: n for n in self.nodes}

    def error(self, what: str) -> WeightsError:
        return WeightsError(f"{self.source}: {what}")

    def node(self, name: str) -> TFNode:
        if name not in self.by_name:
            raise self.error(f"no node {name!r} in the graph")
        return self.by_name[name]

    def const(self, name: str) -> np.ndarray:
        """The value of the ``Const`` node ``name`` (a trailing ``:0`` is ignored)."""
        node = self.node(name.removesuffix(":0"))
        value = node.attrs.get("value")
        if node.op != "Const" or not isinstance(value, TFTensor):
            raise self.error(f"node {node.name!r} is a {node.op}, not a constant tensor")
        try:
            return value.numpy()
        except _Corrupt as exc:
            raise self.error(f"constant {node.name!r}: {exc}") from None


class _Reader:
    """Protobuf wire format over ``data[pos:end]``; every read is checked against ``end``."""

    def __init__(self, data: memoryview, pos: int, end: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _Corrupt("messages nested too deeply")
        self.data, self.pos, self.end, self.depth = data, pos, end, depth

    def done(self) -> bool:
        return self.pos >= self.end

    def varint(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        result = shift = 0
        while True:
            if pos >= end:
                raise _Corrupt(f"truncated varint at byte {pos}")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return result
            shift += 7
            if shift >= 70:
                raise _Corrupt(f"varint longer than 10 bytes at byte {pos}")

    def signed(self) -> int:
        """An int64 / int32 / enum varint (negative numbers are 10-byte two's complement)."""
        value = self.varint() & (1 << 64) - 1
        return value - (1 << 64) if value >> 63 else value

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise _Corrupt(f"a field of {n} bytes at byte {self.pos} runs past its message (ends at {self.end})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def tag(self) -> tuple[int, int]:
        key = self.varint()
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (0, 1, 2, 5):
            raise _Corrupt(f"bad field key {key} at byte {self.pos}")
        return number, wire

    def sub(self) -> "_Reader":
        """The length-delimited field at ``pos`` as a reader of its own; steps past it."""
        n = self.varint()
        start = self.pos
        self.take(n)
        return _Reader(self.data, start, start + n, self.depth + 1)

    def skip(self, wire: int) -> None:
        if wire == 0:
            self.varint()
        elif wire == 1:
            self.take(8)
        elif wire == 5:
            self.take(4)
        else:
            self.take(self.varint())

    def text(self) -> str:
        raw = self.take(self.varint())
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"a name that is not UTF-8 before byte {self.pos}") from None


def _expect(wire: int, want: int, what: str, r: _Reader) -> None:
    if wire != want:
        raise _Corrupt(f"{what} has wire type {wire}, expected {want} (byte {r.pos})")


def _repeated_ints(r: _Reader, wire: int, out: list[int]) -> None:
    """A repeated int field, packed (wire 2) or not (wire 0)."""
    if wire == 0:
        out.append(r.signed())
        return
    _expect(wire, 2, "a repeated int", r)
    packed = r.sub()
    while not packed.done():
        out.append(packed.signed())


def _repeated_floats(r: _Reader, wire: int, out: list[float]) -> None:
    """A repeated float field, packed (wire 2) or not (wire 5)."""
    if wire == 5:
        out.append(struct.unpack("<f", r.take(4))[0])
        return
    _expect(wire, 2, "a repeated float", r)
    raw = r.take(r.varint())
    if len(raw) % 4:
        raise _Corrupt(f"packed floats of {len(raw)} bytes before byte {r.pos}")
    out.extend(np.frombuffer(raw, dtype="<f4").tolist())


def _shape(r: _Reader) -> tuple[int, ...]:
    dims: list[int] = []
    while not r.done():
        number, wire = r.tag()
        if number == 2:
            _expect(wire, 2, "TensorShapeProto.dim", r)
            dim, size = r.sub(), 0
            while not dim.done():
                n, w = dim.tag()
                if n == 1:
                    _expect(w, 0, "Dim.size", dim)
                    size = dim.signed()
                else:
                    dim.skip(w)
            dims.append(size)
        else:
            r.skip(wire)
    return tuple(dims)


def _tensor(r: _Reader) -> TFTensor:
    dtype, shape, content = 0, (), None
    values: list[Any] = []
    while not r.done():
        number, wire = r.tag()
        if number == 1:
            _expect(wire, 0, "TensorProto.dtype", r)
            dtype = r.signed()
        elif number == 2:
            _expect(wire, 2, "TensorProto.tensor_shape", r)
            shape = _shape(r.sub())
        elif number == 4:
            _expect(wire, 2, "TensorProto.tensor_content", r)
            content = r.take(r.varint())
        elif number == 5:
            _repeated_floats(r, wire, values)
        elif number in (7, 10):
            _repeated_ints(r, wire, values)
        else:
            r.skip(wire)
    return TFTensor(dtype, shape, content, tuple(values))


def _list(r: _Reader) -> list[Any]:
    out: list[Any] = []
    while not r.done():
        number, wire = r.tag()
        if number == 2:
            _expect(wire, 2, "ListValue.s", r)
            out.append(bytes(r.take(r.varint())))
        elif number in (3, 6):
            _repeated_ints(r, wire, out)
        elif number == 4:
            _repeated_floats(r, wire, out)
        elif number == 5:
            flags: list[int] = []
            _repeated_ints(r, wire, flags)
            out.extend(bool(v) for v in flags)
        elif number == 7:
            _expect(wire, 2, "ListValue.shape", r)
            out.append(_shape(r.sub()))
        elif number == 8:
            _expect(wire, 2, "ListValue.tensor", r)
            out.append(_tensor(r.sub()))
        else:
            r.skip(wire)
    return out


def _attr_value(r: _Reader) -> Any:
    value: Any = None
    while not r.done():
        number, wire = r.tag()
        if number == 1:
            _expect(wire, 2, "AttrValue.list", r)
            value = _list(r.sub())
        elif number == 2:
            _expect(wire, 2, "AttrValue.s", r)
            value = bytes(r.take(r.varint()))
        elif number in (3, 6):
            _expect(wire, 0, "AttrValue.i/type", r)
            value = r.signed()
        elif number == 4:
            _expect(wire, 5, "AttrValue.f", r)
            value = struct.unpack("<f", r.take(4))[0]
        elif number == 5:
            _expect(wire, 0, "AttrValue.b", r)
            value = bool(r.varint())
        elif number == 7:
            _expect(wire, 2, "AttrValue.shape", r)
            value = _shape(r.sub())
        elif number == 8:
            _expect(wire, 2, "AttrValue.tensor", r)
            value = _tensor(r.sub())
        else:
            r.skip(wire)
    return value


def _node(r: _Reader) -> TFNode:
    name = op = ""
    inputs: list[str] = []
    attrs: dict[str, Any] = {}
    while not r.done():
        number, wire = r.tag()
        if number in (1, 2, 3):
            _expect(wire, 2, "NodeDef name/op/input", r)
            text = r.text()
            if number == 1:
                name = text
            elif number == 2:
                op = text
            else:
                inputs.append(text)
        elif number == 5:
            _expect(wire, 2, "NodeDef.attr", r)
            entry, key, value = r.sub(), "", None
            while not entry.done():
                n, w = entry.tag()
                if n == 1:
                    _expect(w, 2, "attr key", entry)
                    key = entry.text()
                elif n == 2:
                    _expect(w, 2, "attr value", entry)
                    value = _attr_value(entry.sub())
                else:
                    entry.skip(w)
            attrs[key] = value
        else:
            r.skip(wire)
    if not name or not op:
        raise _Corrupt(f"a node without a name or op before byte {r.pos}")
    return TFNode(name, op, tuple(inputs), attrs)


def parse_graph(data: bytes | memoryview, source: str = "<bytes>") -> TFGraph:
    """Parse a serialised GraphDef; ``source`` names it in errors. The tensors keep views of ``data``."""
    view = memoryview(data).cast("B")
    r = _Reader(view, 0, len(view), 0)
    nodes: list[TFNode] = []
    try:
        while not r.done():
            number, wire = r.tag()
            if number == 1:
                _expect(wire, 2, "GraphDef.node", r)
                nodes.append(_node(r.sub()))
            else:
                r.skip(wire)
    except _Corrupt as exc:
        raise WeightsError(f"{source}: not a valid TensorFlow GraphDef, truncated or corrupt ({exc})") from None
    if not nodes:
        raise WeightsError(f"{source}: not a valid TensorFlow GraphDef (no nodes)")
    return TFGraph(source, nodes)


def read_graph(path: str | Path, max_bytes: int = MAX_GRAPH_BYTES) -> TFGraph:
    """Read and parse the frozen GraphDef file ``path`` (at most ``max_bytes``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise WeightsError(f"{path}: {size} bytes, more than the {max_bytes} a frozen graph may have here")
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the TensorFlow graph ({exc.strerror or exc})") from None
    return parse_graph(data, str(path))
