"""LPIPS (Zhang et al. 2018, https://arxiv.org/abs/1801.03924) in plain torch, shared by the ``lpips``
loss, the ``lpips`` metric and Flux-Guard: AlexNet / VGG16 feature stacks (torchvision's layer numbering),
the lpips package's linear heads (shipped with guardkit under ``guardkit/data/lpips``, BSD-2, or read from an
installed lpips package's folder without importing it), weights offline only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from guardkit.errors import ConfigError, WeightsError
from guardkit.weights import KnownWeight

#: net -> (torchvision checkpoint file, where it is published, channels of the five taps)
BACKBONES: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
             (64, 192, 384, 256, 256)),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
            (64, 128, 256, 512, 512)),
}


def backbone_weights() -> tuple[KnownWeight, ...]:
    """The torchvision checkpoints LPIPS reads, for the ``weights=`` of every part that uses LPIPS."""
    return tuple(KnownWeight(file, "torch", f"torchvision's ImageNet checkpoint: download {url} into "
                                            f"$TORCH_HOME/hub/checkpoints or --weights-dir", role=net)
                 for net, (file, url, _) in BACKBONES.items())


HEAD_KEYS = tuple(f"lin{i}.model.1.weight" for i in range(5))
SEED = 0


def _alexnet_features() -> tuple[nn.Sequential, tuple[int, ...]]:
    """torchvision ``alexnet().features`` up to the last ReLU; taps after each ReLU."""
    layers = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),       # 0, 1
        nn.MaxPool2d(3, 2),                                         # 2
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),                # 3, 4
        nn.MaxPool2d(3, 2),                                         # 5
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),               # 6, 7
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),               # 8, 9
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),               # 10, 11
    )
    return layers, (1, 4, 7, 9, 11)


def _vgg16_features() -> tuple[nn.Sequential, tuple[int, ...]]:
    """torchvision ``vgg16().features`` up to relu5_3; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    layers: list[nn.Module] = []
    channels = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers), (3, 8, 15, 22, 29)


SHIPPED_HEADS = Path(__file__).resolve().parent / "data" / "lpips"
"""The lpips package's ``weights/v0.1/{alex,vgg}.pth``, shipped as guardkit package data (BSD-2, see its LICENSE)."""


def shipped_heads_path(net: str) -> Path | None:
    """guardkit's own copy of the lpips linear heads for ``net`` (package data), or None if absent."""
    path = SHIPPED_HEADS / f"{net}.pth"
    return path if path.is_file() else None


def default_heads_path(net: str) -> Path | None:
    """``<lpips package>/weights/v0.1/<net>.pth`` if the ``lpips`` package is installed (not imported)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``); never created."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise WeightsError(f"cannot read {what} {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{what} {path} is not a state dict")
    return state


class LPIPS(nn.Module):
    """LPIPS distance between image batches in [0, 1]: ``LPIPS()(x, y) -> [B]``.

    Args:
        net: ``"alex"`` (the LPIPS default) or ``"vgg"``.
        backbone_path: a torchvision checkpoint (``features.N.weight`` / ``features.N.bias`` keys).
        heads_path: LPIPS linear heads (``lin0.model.1.weight`` ... ``lin4.model.1.weight``).
        weights_dir: a folder searched for the backbone file (and ``lpips_<net>.pth`` heads).
        random_backbone / random_heads: seeded random weights, for tests and timing only.

    The module is frozen (eval, no parameter gradients); gradients flow to the inputs.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        net: str = "alex",
        *,
        backbone_path: str | Path | None = None,
        heads_path: str | Path | None = None,
        weights_dir: str | Path | None = None,
        random_backbone: bool = False,
        random_heads: bool = False,
    ) -> None:
        super().__init__()
        if net not in BACKBONES:
            raise ConfigError(f"LPIPS net must be one of {', '.join(BACKBONES)}, got {net!r}")
        self.net_name = net
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)  # random_backbone: the same weights on every run
            self.features, self.taps = _alexnet_features() if net == "alex" else _vgg16_features()
        self.channels = BACKBONES[net][2]
        self.heads = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in self.channels])
        folder = Path(weights_dir) if weights_dir is not None else None
        if not random_backbone:
            self._load_backbone(self._find_backbone(backbone_path, folder))
        if random_heads:
            gen = torch.Generator().manual_seed(SEED + 1)
            for head, c in zip(self.heads, self.channels):
                head.data.copy_(torch.rand(1, c, 1, 1, generator=gen) * (2.0 / c))
        else:
            self._load_heads(self._find_heads(heads_path, folder))
        self.eval().requires_grad_(False)

    # -- weights ---------------------------------------------------------------------------------

    def _find_backbone(self, path: str | Path | None, folder: Path | None) -> Path:
        filename, url, _ = BACKBONES[self.net_name]
        if path is not None:
            if not Path(path).is_file():
                raise WeightsError(f"LPIPS {self.net_name} backbone_path {path} does not exist: download {url}")
            return Path(path)
        dirs = [d for d in (folder, torch_hub_checkpoints()) if d is not None]
        for d in dirs:
            if (d / filename).is_file():
                return d / filename
        where = ", ".join(str(d) for d in dirs)
        raise WeightsError(f"missing LPIPS {self.net_name} backbone {filename} (looked in {where}): download {url} "
                           f"into one of those folders or pass backbone_path=")

    def _find_heads(self, path: str | Path | None, folder: Path | None) -> Path:
        if path is not None:
            if not Path(path).is_file():
                raise WeightsError(f"LPIPS heads_path {path} does not exist: pass lpips's weights/v0.1/"
                                   f"{self.net_name}.pth")
            return Path(path)
        # --weights-dir (a user's choice) first, then guardkit's shipped copy, then an installed lpips package
        candidates = [folder / f"lpips_{self.net_name}.pth"] if folder is not None else []
        for found in (shipped_heads_path(self.net_name), default_heads_path(self.net_name)):
            if found is not None:
                candidates.append(found)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise WeightsError(f"missing LPIPS {self.net_name} linear heads ({self.net_name}.pth, normally shipped in "
                           f"{SHIPPED_HEADS}): reinstall guardkit, `pip install --no-deps lpips` (its files are read, "
                           f"the package is never imported) or pass heads_path=")

    def _load_backbone(self, path: Path) -> None:
        state = _load_state(path, f"LPIPS {self.net_name} backbone")
        if any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        expected = set(self.features.state_dict())
        # torchvision's VGG16 has one more (parameter-free) pool after relu5_3: nothing to drop for it.
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise WeightsError(f"{path} is not a torchvision {self.net_name} checkpoint: missing "
                               f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        try:
            self.features.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path} does not fit torchvision's {self.net_name}: "
                               f"{str(exc).strip().splitlines()[-1].strip()}") from exc

    def _load_heads(self, path: Path) -> None:
        state = _load_state(path, f"LPIPS {self.net_name} heads")
        missing = [k for k in HEAD_KEYS if k not in state]
        if missing:
            raise WeightsError(f"{path} is not an LPIPS heads file: missing {', '.join(missing)}")
        for i, (head, c) in enumerate(zip(self.heads, self.channels)):
            weight = state[HEAD_KEYS[i]]
            if tuple(weight.shape) != (1, c, 1, 1):
                raise WeightsError(f"{path}: {HEAD_KEYS[i]} has shape {tuple(weight.shape)}, LPIPS {self.net_name} "
                                   f"needs {(1, c, 1, 1)}")
            if bool((weight < 0).any()):
                raise WeightsError(f"{path}: {HEAD_KEYS[i]} has negative weights, LPIPS heads are non-negative")
            head.data.copy_(weight.float())

    # -- forward ---------------------------------------------------------------------------------

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    @staticmethod
    def _unit(x: torch.Tensor) -> torch.Tensor:
        # lpips: x / (||x||_channels + 1e-10). The clamp keeps the gradient finite where all channels are 0.
        tiny = torch.finfo(x.dtype).tiny
        return x / (x.pow(2).sum(dim=1, keepdim=True).clamp_min(tiny).sqrt() + 1e-10)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: [B,3,H,W] in [0, 1] (same shape) -> [B] LPIPS distances."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs inputs of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        n = x.shape[0]
        both = torch.cat([x, y]) * 2 - 1  # [0, 1] -> [-1, 1], then LPIPS's scaling layer
        feats = self._taps((both - self.shift) / self.scale)
        total = x.new_zeros(n)
        for f, head in zip(feats, self.heads):
            diff = (self._unit(f[:n]) - self._unit(f[n:])).pow(2)
            total = total + (diff * head).sum(dim=1).mean(dim=(1, 2))
        return total
