"""insightface's IResNet (``recognition/arcface_torch/backbones/iresnet.py``) in PyTorch: the network
behind the ArcFace face model, in insightface's training layout or the fused layout of its ONNX files.

Example: ``IResNet((3, 4, 14, 3), fused=True)(chips * 2 - 1)`` -> ``[N,512]`` for chips ``[N,3,112,112]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

CHIP_SIZE = 112
BN_EPS = 1e-5


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
