"""dlib's ResNet-29 face descriptor network (``anet_type`` in dlib's ``tools/python/src/face_recognition.cpp``)
in PyTorch. Its trained weights come from dlib's own file through ``dlib_dat.load_dlib_resnet``.

Example: ``DlibResNet()(chips * 255)`` -> ``[N,128]`` for RGB chips ``[N,3,150,150]`` in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
INPUT_SIZE = 150  # dlib's input_rgb_image_sized<150>


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
