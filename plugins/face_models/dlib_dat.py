"""A bounded reader of dlib's serialization format (``dlib/serialize.h``) for
``dlib_face_recognition_resnet_model_v1.dat`` (CC0): every count and shape is checked before it is read,
and the weights go into a :class:`DlibResNet`. dlib itself is not imported.

Example: ``net = load_dlib_resnet("dlib_face_recognition_resnet_model_v1.dat")`` (CPU, eval, frozen).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from guardkit.errors import WeightsError

from .dlib_network import EMBED_DIM, INPUT_SIZE, Affine, DlibResNet, ResBlock

_MAX_FILE_BYTES = 64 << 20  # the real file is 22.5 MB
_MAX_GAP = 4096  # bytes of bookkeeping (bools, empty tensors, versions) allowed between two layers


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def error(self, what: str) -> WeightsError:
        return WeightsError(f"{self.path}: not a valid dlib ResNet face model file ({what}, byte {self.pos})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error("file is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        """dlib's ``unpack_int``: control byte (low nibble = byte count, 0x80 = negative), little-endian."""
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if size > 8 or ctrl & 0x70:
            raise self.error(f"bad integer control byte {ctrl:#04x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if ctrl & 0x80 else value

    def real(self) -> float:
        """dlib's ``float_details``: mantissa * 2**exponent (inf/nan exponents are rejected)."""
        mantissa, exponent = self.int(), self.int()
        if not -2000 < exponent < 2000:
            raise self.error("non-finite real")
        return math.ldexp(mantissa, exponent)

    def expect_ints(self, what: str, expected: Sequence[int]) -> None:
        got = tuple(self.int() for _ in expected)
        if got != tuple(expected):
            raise self.error(f"{what} is {got}, expected {tuple(expected)}")

    def tensor(self, what: str, shape: tuple[int, int, int, int]) -> np.ndarray:
        """A ``resizable_tensor`` (version 2, four dims, raw float32) of exactly ``shape``."""
        self.expect_ints(f"{what} tensor version", (2,))
        self.expect_ints(f"{what} tensor shape", shape)
        count = shape[0] * shape[1] * shape[2] * shape[3]
        values = np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all():
            raise self.error(f"{what} holds non-finite values")
        return values

    def alias(self, what: str, shape: tuple[int, int, int, int]) -> None:
        self.expect_ints(f"{what} alias version", (1,))
        self.expect_ints(f"{what} alias shape", shape)

    def layer(self, tag: str) -> None:
        """Skip the bookkeeping before the next layer, which must be ``tag``, and step past its name."""
        pattern = bytes([1, len(tag)]) + tag.encode("ascii")
        at = self.data.find(pattern, self.pos, self.pos + _MAX_GAP + len(pattern))
        if at < 0:
            cut = self.pos + _MAX_GAP + len(pattern) > len(self.data)
            raise self.error(f"file is truncated (expected layer {tag!r})" if cut else f"expected layer {tag!r}")
        self.pos = at + len(pattern)


def _read_conv(r: _Reader, conv: nn.Conv2d) -> None:
    cout, cin, k, _ = conv.weight.shape
    stride, pad = conv.stride[0], conv.padding[0]
    nweights = cout * cin * k * k
    r.layer("con_4")
    params = r.tensor("con params", (nweights + cout, 1, 1, 1))
    r.expect_ints("con num_filters, nr, nc, strides, paddings", (cout, k, k, stride, stride, pad, pad))
    r.alias("con filters", (cout, cin, k, k))
    r.alias("con biases", (1, cout, 1, 1))
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.real()
    conv.weight.data.copy_(torch.from_numpy(params[:nweights].reshape(cout, cin, k, k)))
    conv.bias.data.copy_(torch.from_numpy(params[nweights:]))


def _read_affine(r: _Reader, aff: Affine) -> None:
    c = aff.gamma.numel()
    r.layer("affine_")
    params = r.tensor("affine params", (2 * c, 1, 1, 1))
    r.alias("affine gamma", (1, c, 1, 1))
    r.alias("affine beta", (1, c, 1, 1))
    r.expect_ints("affine mode (0 = CONV_MODE)", (0,))
    aff.gamma.data.copy_(torch.from_numpy(params[:c]))
    aff.beta.data.copy_(torch.from_numpy(params[c:]))


def _read_pool(r: _Reader, tag: str, window: int, stride: int) -> None:
    r.layer(tag)
    r.expect_ints(f"{tag} window, strides, paddings", (window, window, stride, stride, 0, 0))


def _parse_into(net: DlibResNet, data: bytes, path: Path) -> None:
    r = _Reader(data, path)
    r.layer("input_rgb_image_sized")
    means = [r.real() for _ in range(3)]
    if not all(0.0 <= m <= 255.0 for m in means):
        raise r.error(f"input means {means} outside 0..255")
    r.expect_ints("input size", (INPUT_SIZE, INPUT_SIZE))
    net.means.copy_(torch.tensor(means, dtype=torch.float32))

    _read_conv(r, net.stem_conv)
    _read_affine(r, net.stem_aff)
    r.layer("relu_")
    _read_pool(r, "max_pool_2", 3, 2)
    for block in net.blocks:
        assert isinstance(block, ResBlock)
        _read_conv(r, block.conv1)
        _read_affine(r, block.aff1)
        r.layer("relu_")
        _read_conv(r, block.conv2)
        _read_affine(r, block.aff2)
        if block.stride == 2:
            _read_pool(r, "avg_pool_2", 2, 2)
        r.layer("add_prev_")
        r.layer("relu_")
    _read_pool(r, "avg_pool_2", 0, 1)  # a 0x0 window: global average pooling

    nin = net.fc.shape[0]
    r.layer("fc_2")
    r.expect_ints("fc outputs, inputs", (EMBED_DIM, nin))
    weights = r.tensor("fc params", (nin, EMBED_DIM, 1, 1))
    r.alias("fc weights", (nin, EMBED_DIM, 1, 1))
    r.alias("fc biases", (0, 0, 0, 0))
    r.expect_ints("fc bias mode (1 = no bias)", (1,))
    net.fc.data.copy_(torch.from_numpy(weights.reshape(nin, EMBED_DIM)))


def load_dlib_resnet(path: str | Path) -> DlibResNet:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` into a frozen :class:`DlibResNet` (CPU, eval).

    Raises ``WeightsError`` (one line, naming the file) for a missing, truncated or foreign file.
    """
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise WeightsError(f"{path}: too large for the dlib ResNet face model ({path.stat().st_size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the dlib ResNet face model ({exc.strerror or exc})") from exc
    net = DlibResNet()
    with torch.no_grad():
        _parse_into(net, data, path)
    net.eval()
    net.requires_grad_(False)
    return net
