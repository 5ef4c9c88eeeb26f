"""LPIPS (Zhang et al. 2018) in plain torch, and the two losses built on it.

``LPIPS`` is the learned perceptual distance: AlexNet or VGG16 feature stacks (torchvision's layer
layout), LPIPS's input scaling, unit-normalised channels, squared differences, non-negative 1x1
linear heads, spatial mean, sum over the five layers. One value per sample.

Weights never come from the network (see TRAPS.md, "torch and torchvision"):

- the linear heads are the files ``weights/v0.1/{alex,vgg}.pth`` of the ``lpips`` package (BSD-2), shipped
  with guardkit as package data (``guardkit/data/lpips``); ``heads_path`` or ``lpips_<net>.pth`` in the
  weights folder override them, and an installed ``lpips`` package is the last resort, found with
  ``importlib.util.find_spec`` WITHOUT importing it (it imports torchvision);
- the backbone is a torchvision ImageNet checkpoint the user has on disk (``alexnet-owt-7be5be79.pth``
  or ``vgg16-397923af.pth``): ``backbone_path``, else the weights folder, else
  ``$TORCH_HOME/hub/checkpoints`` (read only).

``random_backbone`` / ``random_heads`` build seeded random weights instead: for tests and timing only,
the distance is then not the published LPIPS.

Losses:
``lpips``: LPIPS(decode(encode(adv)), clean), maximised: the editor's reconstruction of the protected
photo should look unlike the clean photo (FaceLock's feature-extractor term f_FE). Needs an encoder.
``lpips-pixel``: LPIPS(adv, clean), minimised: a perceptual cost on the perturbation itself.

Both take options on the command line, ``--loss lpips:net=vgg=1`` (name, options, then ``=WEIGHT``),
or ``part_options={"loss": {"lpips": {"net": "vgg"}}}`` from Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch

from guardkit import hookimpl
from guardkit.config import build_config
from guardkit.errors import ConfigError
from guardkit.lpips import BACKBONES, LPIPS, backbone_weights
from guardkit.view import View


@dataclass(frozen=True)
class LpipsLossConfig:
    """Options of the LPIPS losses (``--loss lpips:net=vgg=1``).

    ``net``: "alex" (the LPIPS default) or "vgg"; ``backbone_path`` / ``heads_path``: weight files;
    ``weights_dir``: the folder searched for both (default: the run's ``weights_dir``, as for every other
    part); ``random_backbone`` / ``random_heads``: seeded random weights, for tests and timing only."""

    net: str = "alex"
    backbone_path: str | None = None
    heads_path: str | None = None
    weights_dir: str | None = None
    random_backbone: bool = False
    random_heads: bool = False


class LpipsLoss:
    """LPIPS between the decoded protected photo and the clean photo (maximised: FaceLock's f_FE).

    Built as ``LpipsLoss(run, **options)`` (options: ``LpipsLossConfig``); the run's ``weights_dir`` is
    searched unless the options name another. The LPIPS module is built on the first call and follows
    the input's device and dtype. Example: ``LpipsLoss(RunConfig(weights_dir="w"), net="vgg")``.
    """

    name: ClassVar[str] = "lpips"
    maximize: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"encoder"})
    source: ClassVar[str] = "decoded"

    def __init__(self, run: Any = None, **options: Any) -> None:
        config = build_config(LpipsLossConfig, options, f"LPIPS loss {self.name!r}")
        if config.net not in BACKBONES:
            raise ConfigError(f"LPIPS net must be one of {', '.join(BACKBONES)}, got {config.net!r}")
        if config.weights_dir is None and getattr(run, "weights_dir", None) is not None:
            config = replace(config, weights_dir=run.weights_dir)  # where every other part's weights are
        self.config = config
        self.options = asdict(config)
        self.module: LPIPS | None = None
        self._placed: tuple[torch.device, torch.dtype] | None = None

    def lpips(self, like: torch.Tensor) -> LPIPS:
        """The LPIPS module, built on first use and moved to ``like``'s device and dtype."""
        if self.module is None:
            self.module = LPIPS(**self.options)
        if self._placed != (like.device, like.dtype):
            self.module.to(device=like.device, dtype=like.dtype)
            self._placed = (like.device, like.dtype)
        return self.module

    def __call__(self, view: View) -> torch.Tensor:
        image = view.decoded if self.source == "decoded" else view.adv
        return self.lpips(image)(image, view.clean.to(image.dtype))


class LpipsPixelLoss(LpipsLoss):
    """LPIPS between the protected photo and the clean photo: a perceptual cost (minimised)."""

    name: ClassVar[str] = "lpips-pixel"
    maximize: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()
    source: ClassVar[str] = "adv"
    #: a cost on the perturbation itself (as ``pixel-l2``): under EOT it sees the protected photo, not its
    #: purifications (LPIPS(blur(x'), x) measured the blur, and pushed x' away from x to undo it)
    eot: ClassVar[bool] = False


@hookimpl
def guardkit_register_losses(register):
    register("lpips", LpipsLoss,
             summary="LPIPS(decode(encode(protected)), clean), maximised (FaceLock f_FE); local backbone + lpips heads",
             weights=backbone_weights())
    register("lpips-pixel", LpipsPixelLoss, summary="LPIPS(protected, clean): perceptual cost, minimised",
             weights=backbone_weights())
