"""dlib's ResNet-29 face descriptor, ported to PyTorch so that gradients reach the photo.

The trained weights are read straight from dlib's own ``dlib_face_recognition_resnet_model_v1.dat``
(CC0) by a small, bounded parser of dlib's serialization format; dlib itself is not imported. The
chip geometry is a differentiable copy of dlib's ``get_face_chip_details(shape5, 150, 0.25)`` +
``extract_image_chips`` (grown box crop, ``pyramid_down<2>`` levels, bilinear sampling, uint8
truncation), so ``embed(align(photo, faces))`` is what ``compute_face_descriptor(photo, shape)``
computes, to within float rounding. The uint8 roundings and truncations are straight-through.

Facts and sources: ``shared/reference/dlib.md``; dlib's ``dnn/core.h``, ``dnn/layers.h``,
``dnn/input.h``, ``cuda/tensor.h``, ``serialize.h``, ``image_transforms/interpolation.h``,
``image_transforms/image_pyramid.h`` and ``tools/python/src/face_recognition.cpp``.

Example::

    model = DlibFaceModel(RunConfig()); model.load()
    chips = model.align(photos, faces)            # [N,3,150,150] in [0,1]
    d = model.distance(model.embed(chips), ref)   # Euclidean; same person below 0.6
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.types import DistanceMetric, Face, LandmarkScheme
from guardkit.weights import DLIB_RESNET, locate_dlib_file

CHIP_SIZE = 150
CHIP_PADDING = 0.25

# ---------------------------------------------------------------------------------------------
# The architecture (dlib's `anet_type` in tools/python/src/face_recognition.cpp)
# ---------------------------------------------------------------------------------------------

#: Residual blocks in input-to-output order: (output channels, stride of the first conv).
#: A stride-2 block is dlib's `ares_down` (its skip is a 2x2 average pool of the input).
BLOCKS: tuple[tuple[int, int], ...] = (
    (32, 1), (32, 1), (32, 1),
    (64, 2), (64, 1), (64, 1), (64, 1),
    (128, 2), (128, 1), (128, 1),
    (256, 2), (256, 1), (256, 1),
    (256, 2),
)  # fmt: skip
STEM_CHANNELS = 32
EMBED_DIM = 128


def _add_prev(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``tt::add``: tensors of different shapes are zero-padded (aligned at index 0) to the larger."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def pad(t: Tensor) -> Tensor:
        # F.pad takes (last-dim left, right, ...): pad only at the end of W, H and C
        return F.pad(t, (0, shape[2] - t.shape[3], 0, shape[1] - t.shape[2], 0, shape[0] - t.shape[1]))

    return pad(a) + pad(b)


class Affine(nn.Module):
    """dlib's ``affine_`` in CONV_MODE (a frozen batch norm): ``x * gamma[c] + beta[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma[:, None, None] + self.beta[:, None, None]


class ResBlock(nn.Module):
    """``relu(add_prev(affine(conv(relu(affine(conv(x))))), skip))``; dlib pads strided convs by 0."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1 if stride == 1 else 0)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1)
        self.aff2 = Affine(cout)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.stride == 2 else x
        return F.relu(_add_prev(y, skip))


class DlibResNet(nn.Module):
    """dlib's ResNet-29 metric network. Input: ``[N,3,150,150]`` RGB in 0..255; output ``[N,128]``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(3))
        self.stem_conv = nn.Conv2d(3, STEM_CHANNELS, 7, 2, padding=0)
        self.stem_aff = Affine(STEM_CHANNELS)
        blocks, cin = [], STEM_CHANNELS
        for cout, stride in BLOCKS:
            blocks.append(ResBlock(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Parameter(torch.zeros(cin, EMBED_DIM))  # used as x @ fc, no bias

    def forward(self, x255: Tensor) -> Tensor:
        x = (x255 - self.means[None, :, None, None]) / 256.0
        x = F.max_pool2d(F.relu(self.stem_aff(self.stem_conv(x))), 3, 2)
        x = self.blocks(x)
        return x.mean(dim=(2, 3)) @ self.fc


# ---------------------------------------------------------------------------------------------
# The parser (dlib/serialize.h): bounded, every count and shape checked before reading it
# ---------------------------------------------------------------------------------------------

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
    r.expect_ints("input size", (CHIP_SIZE, CHIP_SIZE))
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


# ---------------------------------------------------------------------------------------------
# The face chip (dlib/image_transforms/interpolation.h, image_pyramid.h), differentiable
# ---------------------------------------------------------------------------------------------

# dlib's 5-point template (get_face_chip_details), in chip units before padding
_TEMPLATE5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

Rect = tuple[float, float, float, float]  # dlib drectangle: left, top, right, bottom (inclusive)


def _lround(v: float) -> int:
    """``std::lround``: halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _area(rect: Rect) -> float:
    left, top, right, bottom = rect
    return 0.0 if top > bottom or left > right else (right - left + 1) * (bottom - top + 1)


def _rect_down(rect: Rect) -> Rect:
    """``pyramid_down<2>::rect_down``: ``p / 2 - (1.25, 0.75)`` on both corners."""
    left, top, right, bottom = rect
    return (left / 2 - 1.25, top / 2 - 0.75, right / 2 - 1.25, bottom / 2 - 0.75)


def _rotated_corners(rect: Rect, angle: float) -> np.ndarray:
    """tl, tr, bl, br of ``rect`` rotated by ``angle`` about its centre (dlib's ``rotate_point``)."""
    left, top, right, bottom = rect
    cx, cy = (left + right) / 2, (top + bottom) / 2
    c, s = math.cos(angle), math.sin(angle)
    pts = np.array([[left, top], [right, top], [left, bottom], [right, bottom]], dtype=np.float64)
    d = pts - (cx, cy)
    return np.stack([c * d[:, 0] - s * d[:, 1] + cx, s * d[:, 0] + c * d[:, 1] + cy], axis=1)


def face_chip_details(
    landmarks: Sequence[tuple[float, float]], size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> tuple[Rect, float]:
    """dlib's ``get_face_chip_details`` for 5 points: the chip's source rectangle and its angle."""
    to = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    frm = (padding + _TEMPLATE5) / (2 * padding + 1) * size
    # find_similarity_transform(from, to): Umeyama's least squares, as dlib writes it
    mf, mt = frm.mean(0), to.mean(0)
    sigma_from = ((frm - mf) ** 2).sum(1).mean()
    cov = (to - mt).T @ (frm - mf) / len(frm)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(cov) < 0 or (np.linalg.det(cov) == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        flip = 1 if d[1] < d[0] else 0  # a reflection: flip the weaker axis
        s[flip, flip] = -1
    rot = u @ s @ vt
    c = float(np.trace(np.diag(d) @ s) / sigma_from) if sigma_from != 0 else 1.0
    m = c * rot
    t = mt - m @ mf
    p = m @ np.array([1.0, 0.0])
    angle = math.atan2(p[1], p[0])
    scale = math.hypot(p[0], p[1])
    cx, cy = m @ np.array([size / 2, size / 2]) + t
    w = size * scale - 1  # centered_drect(p, w, h) shrinks by one first
    return (cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2), angle


@dataclass(frozen=True)
class ChipPlan:
    """How ``extract_image_chips`` pulls one chip: crop ``box`` (inclusive, in the source image; ``None``
    when nothing of it lies in the image), ``downs`` passes of ``pyramid_down<2>``, then bilinear
    sampling of chip pixel (col, row) at ``affine @ (col, row, 1)`` in the downsampled crop."""

    box: tuple[int, int, int, int] | None
    downs: int
    affine: np.ndarray  # 2x3, float64


def plan_chip(rect: Rect, angle: float, image_hw: tuple[int, int], size: int = CHIP_SIZE) -> ChipPlan:
    """The geometry of dlib's ``extract_image_chips`` (bilinear) for one square chip of ``size``."""
    area = float(size * size)
    height, width = image_hw
    # pyramid depth and the border it needs (dlib computes both on the untranslated rectangle)
    depth, grow, down = 0, 2.0, _rect_down(rect)
    while _area(down) > area:
        down, depth, grow = _rect_down(down), depth + 1, grow * 2 + 2
    rot = _rotated_corners(rect, angle)
    grown = (rot[:, 0].min() - grow, rot[:, 1].min() - grow, rot[:, 0].max() + grow, rot[:, 1].max() + grow)
    clipped = (max(grown[0], 0.0), max(grown[1], 0.0), min(grown[2], width - 1.0), min(grown[3], height - 1.0))
    box = tuple(_lround(v) for v in clipped)
    if box[0] > box[2] or box[1] > box[3]:
        return ChipPlan(None, 0, np.zeros((2, 3)))
    # the pyramid level to sample from, found on the rectangle translated into the crop
    level_rect: Rect = (rect[0] - box[0], rect[1] - box[1], rect[2] - box[0], rect[3] - box[1])
    downs = 0
    while _area(_rect_down(level_rect)) > area:
        level_rect, downs = _rect_down(level_rect), downs + 1
    corners = _rotated_corners(level_rect, angle)  # tl, tr, bl, br
    # find_affine_transform from chip corners (0,0), (size-1,0), (0,size-1): exact for three points
    ex, ey = (corners[1] - corners[0]) / (size - 1), (corners[2] - corners[0]) / (size - 1)
    affine = np.stack([ex, ey, corners[0]], axis=1)
    return ChipPlan(box, downs, affine)  # type: ignore[arg-type]


def _ste(x: Tensor, y: Tensor) -> Tensor:
    """Forward ``y``, backward identity through ``x``."""
    return x + (y - x).detach()


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def pyramid_down(x255: Tensor) -> Tensor:
    """dlib's ``pyramid_down<2>`` on ``[C,H,W]`` integer-valued 0..255: 5x5 binomial, stride 2, no
    padding, output ``((H-3)//2, (W-3)//2)``, integer truncation (straight-through)."""
    c, h, w = x255.shape
    if h <= 8 or w <= 8:
        return x255.new_zeros((c, 0, 0))
    k = torch.outer(_BINOMIAL, _BINOMIAL).to(x255)  # integer weights: float32 sums stay exact
    out = F.conv2d(x255[None], k.expand(c, 1, 5, 5), stride=2, groups=c)[0] / 256.0
    return _ste(out, out.floor())


def sample_bilinear(src: Tensor, affine: np.ndarray, size: int) -> Tensor:
    """dlib's ``transform_image`` with ``interpolate_bilinear`` and a black background.

    ``src`` [C,H,W]; chip pixel (col, row) reads ``src`` at ``affine @ (col, row, 1)``; a point whose
    2x2 neighbourhood is not wholly inside ``src`` gives 0. Interpolated in float64, as dlib does,
    then truncated to an integer (straight-through). Returns [C,size,size] (dtype of ``src``).
    """
    c, h, w = src.shape
    if h == 0 or w == 0:
        return src.new_zeros((c, size, size))
    grid = np.arange(size, dtype=np.float64)
    cols, rows = np.meshgrid(grid, grid)  # rows[i, j] = i, cols[i, j] = j
    px = affine[0, 0] * cols + affine[0, 1] * rows + affine[0, 2]
    py = affine[1, 0] * cols + affine[1, 1] * rows + affine[1, 2]
    left, top = np.floor(px), np.floor(py)
    valid = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    fx, fy = px - left, py - top
    li = np.where(valid, left, 0).astype(np.int64)
    ti = np.where(valid, top, 0).astype(np.int64)
    idx = ti * w + li
    dev = src.device
    flat = src.reshape(c, h * w).double()
    idx_t = torch.from_numpy(idx.reshape(-1)).to(dev)
    tl, tr = flat[:, idx_t], flat[:, idx_t + 1]
    bl, br = flat[:, idx_t + w], flat[:, idx_t + w + 1]
    fx_t = torch.from_numpy(fx.reshape(-1)).to(dev)
    fy_t = torch.from_numpy(fy.reshape(-1)).to(dev)
    mask = torch.from_numpy(valid.reshape(-1).astype(np.float64)).to(dev)
    out = ((1 - fy_t) * ((1 - fx_t) * tl + fx_t * tr) + fy_t * ((1 - fx_t) * bl + fx_t * br)) * mask
    out = _ste(out, out.floor())
    return out.reshape(c, size, size).to(src.dtype)


def _to255(x: Tensor) -> Tensor:
    """[0,1] -> 0..255 rounded to the uint8 grid dlib sees (straight-through)."""
    x = x * 255.0
    return _ste(x, x.round().clamp(0, 255))


def extract_chip(image: Tensor, plan: ChipPlan, size: int = CHIP_SIZE) -> Tensor:
    """One chip [3,size,size] in [0,1] (on the uint8 grid) from ``image`` [3,H,W] in [0,1] along ``plan``.

    Only the crop is touched (rounded to uint8, downsampled, sampled), so the cost follows the face.
    """
    if plan.box is None:
        return image.new_zeros((image.shape[0], size, size))
    left, top, right, bottom = plan.box
    level = _to255(image[:, top : bottom + 1, left : right + 1])
    for _ in range(plan.downs):
        level = pyramid_down(level)
    return sample_bilinear(level, plan.affine, size) / 255.0


def dlib_jitter(chips: Tensor, generator: torch.Generator) -> Tensor:
    """dlib's ``jitter_image``, differentiable: one random re-crop of each chip.

    A box of ``floor(144 / U(0.97, 0.99999))`` px centred on the chip centre shifted by
    ``round(U(-0.02, 0.02) * 144)`` px in x and y, rotated by ``U(-3, 3)`` degrees, re-extracted
    bilinearly to the chip size and mirrored left-right when ``U(0, 1) > 0.5``. The five numbers per
    chip come from ``generator`` (seed-deterministic), not from dlib's generator.
    ``chips`` [N,3,150,150] in [0,1] -> [N,3,150,150] in [0,1] (uint8 grid, straight-through).
    """
    n, _, size, size_w = chips.shape
    if size != size_w:
        raise ConfigError(f"dlib_jitter needs square chips, got {tuple(chips.shape)}")
    draws = torch.rand((n, 5), generator=generator, device=generator.device, dtype=torch.float64).cpu().numpy()
    inner = size - 6  # shrink_rect(get_rect(img), 3)
    centre = (3 + (size - 4) + 1) // 2  # dlib's integer center() of that rectangle
    out = []
    for i in range(n):
        u = draws[i]
        shift_x = math.floor((-0.02 + u[0] * 0.04) * inner + 0.5)
        shift_y = math.floor((-0.02 + u[1] * 0.04) * inner + 0.5)
        box = int(inner / (0.97 + u[2] * (0.99999 - 0.97)))
        angle = (-3 + u[3] * 6) * math.pi / 180
        left, top = centre + shift_x - box // 2, centre + shift_y - box // 2
        rect = (float(left), float(top), float(left + box - 1), float(top + box - 1))
        chip = extract_chip(chips[i], plan_chip(rect, angle, (size, size), size), size)
        if u[4] > 0.5:
            chip = chip.flip(-1)
        out.append(chip)
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


class DlibFaceModel:
    """dlib's ResNet-29 face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, CC0) in PyTorch.

    ``align`` is dlib's 150 px face chip for its 5-point landmarks (padding 0.25); ``embed`` gives
    the raw 128-d descriptor; faces match when the Euclidean distance is below 0.6. The network
    always runs in float32 (the port is exact to ~1e-6; half precision would not be).
    """

    metric: ClassVar[DistanceMetric] = "euclidean"
    threshold: ClassVar[float] = 0.6
    input_size: ClassVar[int] = CHIP_SIZE
    differentiable: ClassVar[bool] = True
    schemes: ClassVar[tuple[LandmarkScheme, ...]] = ("dlib5",)
    default_finder: ClassVar[str] = "dlib"

    def __init__(self, run: RunConfig, **options: Any) -> None:
        if options:
            raise ConfigError(f"face model 'dlib' takes no options, got {', '.join(sorted(options))}")
        self.run = run
        self.net: DlibResNet | None = None

    def load(self) -> None:
        if self.net is not None:
            return
        path = locate_dlib_file(DLIB_RESNET, self.run.weights_dir)
        self.net = load_dlib_resnet(path).to(self.run.torch_device())

    def _loaded(self) -> DlibResNet:
        if self.net is None:
            self.load()
        assert self.net is not None
        return self.net

    def align(self, images: Tensor, faces: Sequence[Face]) -> Tensor:
        """Chips [N,3,150,150] in [0,1] for ``faces`` of ``images`` [B,3,H,W] in [0,1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"align expects images [B,3,H,W], got {tuple(images.shape)}")
        height, width = images.shape[2], images.shape[3]
        chips = []
        for face in faces:
            if face.scheme not in self.schemes:
                raise ConfigError(f"face model 'dlib' needs dlib5 landmarks, got {face.scheme}")
            if not 0 <= face.image_index < images.shape[0]:
                raise ConfigError(f"face image_index {face.image_index} outside the batch of {images.shape[0]}")
            rect, angle = face_chip_details(face.landmarks)
            chips.append(extract_chip(images[face.image_index], plan_chip(rect, angle, (height, width))))
        if not chips:
            return images.new_zeros((0, 3, CHIP_SIZE, CHIP_SIZE))
        return torch.stack(chips)

    def embed(self, chips: Tensor) -> Tensor:
        """Chips [N,3,150,150] in [0,1] -> descriptors [N,128] (not normalised)."""
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ConfigError(f"dlib embed expects chips [N,3,150,150], got {tuple(chips.shape)}")
        net = self._loaded()
        return net(chips.to(net.means.device, torch.float32) * 255.0)

    def jitter(self, chips: Tensor, draws: int, generator: torch.Generator) -> Tensor:
        """EOT: ``draws`` of dlib's own ``jitter_image`` per chip, [N,...] -> [draws*N,...] (K blocks of N),
        the transformation ``compute_face_descriptor(num_jitters=...)`` averages over."""
        return torch.cat([dlib_jitter(chips, generator) for _ in range(draws)])

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).norm(dim=-1)


@hookimpl
def guardkit_register_face_models(register: Any) -> None:
    register("dlib", DlibFaceModel, summary="dlib ResNet-29 face descriptor (CC0, offline), PyTorch port")
