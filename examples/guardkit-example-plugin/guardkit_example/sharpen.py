"""Purifier ``example-sharpen``: ``x + strength * (detail kernel * x)``, the 3x3 kernel read from a weight
file this package ships (``sharpen3x3.json``). It shows how a third-party part declares its weights
(``SHARPEN_KERNEL``, passed to ``register(..., weights=...)`` so that ``guardkit models`` finds and
verifies the file) and its number shorthand (``example-sharpen5`` is ``example-sharpen:strength=0.5``).

Example: ``guardkit eval ... --purify example-sharpen5``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError, WeightsError
from guardkit.specs import Shorthand
from guardkit.weights import KnownWeight, find_known_weight, sha256_of

#: Looked for in ``--weights-dir`` first, then in this installed package.
SHARPEN_KERNEL = KnownWeight(
    "sharpen3x3.json", "package", "shipped with guardkit-example (pip install guardkit-example)",
    pack="guardkit_example", sha256="a185dba006833f24bf4a80392fdf09f140a591dbc0bd9bea6e443ad87a4ecd78",
)


@dataclass(frozen=True)
class SharpenConfig:
    """``strength``: how much of the detail image is added back, in [0, 4]."""

    strength: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not 0 <= self.strength <= 4:
            raise ConfigError(f"example-sharpen strength must be in [0, 4], got {self.strength!r}")


class Sharpen:
    """Sharpening with a 3x3 detail kernel from ``sharpen3x3.json`` (edge pixels repeated); differentiable."""

    differentiable: ClassVar[bool] = True
    shorthand: ClassVar[Shorthand] = Shorthand("strength", 10)

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: SharpenConfig = build_config(SharpenConfig, options)
        self.kernel: torch.Tensor | None = None

    def load(self) -> None:
        path = find_known_weight(SHARPEN_KERNEL, self.run.weights_dir)
        if path is None:
            raise WeightsError(f"missing {SHARPEN_KERNEL.name}: {SHARPEN_KERNEL.how_to_get}")
        if sha256_of(path) != SHARPEN_KERNEL.sha256:
            raise WeightsError(f"{path}: sha256 does not match guardkit-example's {SHARPEN_KERNEL.name}")
        kernel = torch.tensor(json.loads(path.read_text())["kernel"], dtype=torch.float32)
        if kernel.shape != (3, 3):
            raise WeightsError(f"{path}: kernel must be 3x3, got {tuple(kernel.shape)}")
        self.kernel = kernel

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kernel is None:
            self.load()
        assert self.kernel is not None
        c = images.shape[1]
        weight = self.kernel.to(images).expand(c, 1, 3, 3)
        detail = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), weight, groups=c)
        return (images + self.config.strength * detail).clamp(0, 1)
