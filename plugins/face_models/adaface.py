"""AdaFace (Kim, Jain, Liu, CVPR 2022; https://arxiv.org/abs/2204.00964): the IR-50 / IR-101 networks
in PyTorch, loading the authors' released checkpoints, so that gradients reach the photo.

The network is the "improved residual" ResNet of ArcFace as the AdaFace repository builds it
(``net.py``: ``Backbone(input_size=(112, 112), num_layers=50 | 100, mode="ir")``). The module and
parameter names below follow that file, so the released ``state_dict`` loads with ``strict=True``:

- ``input_layer``: conv3x3(3->64) - BN - PReLU, stride 1;
- ``body``: four stages of ``BasicBlockIR`` (64, 128, 256, 512 channels; 3-4-14-3 blocks for IR-50,
  3-13-30-3 for IR-101), the first block of each stage with stride 2. A block is
  ``res_layer`` = BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus ``shortcut_layer`` =
  a 1x1 max-pool with that stride (same width) or conv1x1(stride) - BN (wider);
- ``output_layer``: BN2d - Dropout(0.4) - flatten - Linear(512*7*7, 512) - BatchNorm1d(512, no affine).

AdaFace's own ``forward`` returns ``(feature / |feature|, |feature|)``; ``embed`` returns the
``feature`` itself (the output of ``output_layer`` before that split): its direction is the identity,
its norm AdaFace's image-quality proxy. ``distance`` is ``1 - cosine``.

Input convention (AdaFace README, "Pretrained Models"; ``inference.py:to_input``): the networks were
trained on **BGR** chips normalised as ``(x / 255 - 0.5) / 0.5``, 112x112, aligned to the ArcFace
5-point template. Chips here are RGB in [0, 1]; ``embed`` flips the channels and normalises.

Weights: the ``.ckpt`` files linked from the AdaFace README (``adaface_ir50_ms1mv2.ckpt``,
``adaface_ir101_webface12m.ckpt``, ...) are PyTorch Lightning checkpoints whose ``state_dict`` keys
start with ``model.`` (the backbone; ``head.*``, the training-time class centres, is dropped, as the
official loader does). A plain backbone state dict also loads, and so does CVLFace's
``model.safetensors`` (keys ``model.net.*``; needs the ``safetensors`` package) from the Hugging
Face repo ``minchul/cvlface_adaface_ir101_webface12m``. Files are read with
``torch.load(..., weights_only=True)`` only: a checkpoint holding other pickled objects is refused.

Example::

    model = AdaFace(RunConfig(weights_dir=Path("weights"))); model.load()
    chips = model.align(photos, faces)              # [N,3,112,112] RGB in [0,1]
    d = model.distance(model.embed(chips), ref)     # 1 - cosine; same person below 0.7
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardkit import hookimpl
from guardkit.align import ARCFACE_TEMPLATE_112, similarity_align
from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError, WeightsError, first_line
from guardkit.types import DistanceMetric, Face, LandmarkScheme
from guardkit.weights import KnownWeight

CHIP_SIZE = 112
EMBED_DIM = 512
STAGE_WIDTHS = (64, 128, 256, 512)

#: Blocks per stage of each architecture (AdaFace ``net.py``, ``get_blocks(50 | 100)``).
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "ir_50": (3, 4, 14, 3),
    "ir_101": (3, 13, 30, 3),
}

#: The released checkpoint looked for in ``RunConfig.weights_dir`` for each architecture, best first.
DEFAULT_FILES: dict[str, str] = {
    "ir_101": "adaface_ir101_webface12m.ckpt",
    "ir_50": "adaface_ir50_ms1mv2.ckpt",
}

HOW_TO_GET = (
    "download an AdaFace checkpoint (the .ckpt links under 'Pretrained Models' in the README of "
    "github.com/mk-minchul/AdaFace, e.g. adaface_ir101_webface12m.ckpt, or model.safetensors from "
    "huggingface.co/minchul/cvlface_adaface_ir101_webface12m), put it in a folder and pass "
    "--weights-dir FOLDER, or give the file with the face-model option path=FILE"
)

# ---------------------------------------------------------------------------------------------
# The architecture
# ---------------------------------------------------------------------------------------------


class IRBlock(nn.Module):
    """One ``BasicBlockIR``: ``res_layer(x) + shortcut_layer(x)``, downsampling by ``stride``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            # a 1x1 max-pool is a plain strided subsample; it has no weights
            self.shortcut_layer: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceNet(nn.Module):
    """AdaFace's IR backbone for 112x112 chips. Input ``[N,3,112,112]`` BGR in [-1, 1]; output the
    raw feature ``[N,512]`` (AdaFace's ``forward`` would then split it into direction and norm)."""

    def __init__(self, arch: str = "ir_50") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"unknown AdaFace arch {arch!r}; choose one of {', '.join(ARCHS)}")
        self.arch = arch
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks, cin = [], 64
        for width, count in zip(STAGE_WIDTHS, ARCHS[arch]):
            for i in range(count):
                blocks.append(IRBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.body = nn.Sequential(*blocks)
        side = CHIP_SIZE // 2 ** len(STAGE_WIDTHS)  # 7
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(cin * side * side, EMBED_DIM),
            nn.BatchNorm1d(EMBED_DIM, affine=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def infer_arch(keys: Sequence[str]) -> str | None:
    """The architecture whose block count matches the ``body.<i>.`` keys of a backbone state dict."""
    indices = {int(m.group(1)) for k in keys if (m := re.match(r"body\.(\d+)\.", k))}
    if not indices:
        return None
    count = max(indices) + 1
    return next((arch for arch, stages in ARCHS.items() if sum(stages) == count), None)


# ---------------------------------------------------------------------------------------------
# Loading (safe only)
# ---------------------------------------------------------------------------------------------


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep the keys under ``prefix`` without it, when there are any; otherwise ``state`` unchanged."""
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _read_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise WeightsError(f"{path}: reading .safetensors needs the safetensors package") from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            raise WeightsError(f"{path}: not a readable safetensors file ({reason})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise WeightsError(
                f"{path}: refused to load: the checkpoint holds pickled Python objects (it contains "
                f"{found.group(1)}) that safe loading (torch.load weights_only=True) does not allow, and guardkit "
                "never unpickles arbitrary code; if you trust the file, re-save only its tensors: "
                "torch.save({'state_dict': ckpt['state_dict']}, NEW)"
            ) from exc
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = detail.group(1).strip() if detail else first_line(exc)
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint (weights_only=True: {reason})") from exc
    except Exception as exc:
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({reason})") from exc


def backbone_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The backbone's tensors out of a Lightning checkpoint (``state_dict`` with ``model.*`` keys;
    other keys such as ``head.kernel`` are dropped), a CVLFace file (``model.net.*``) or a plain
    state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path}: not an AdaFace checkpoint (expected a dict of tensors, or one under 'state_dict')")
    state = _strip_prefix(obj, "model.")
    return _strip_prefix(state, "net.")


def _describe(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_adaface(path: Path, arch: str | None = None) -> AdaFaceNet:
    """Build the network for ``path`` (``arch`` or the one its keys imply) and load it strictly.

    Returns it on the CPU in float32, in eval mode, without gradients. Every problem is a one-line
    ``WeightsError`` naming the file."""
    state = backbone_state_dict(_read_file(path), path)
    found = infer_arch(list(state))
    if arch is None:
        if found is None:
            raise WeightsError(f"{path}: can't tell the AdaFace architecture from its keys; pass arch=ir_50 or ir_101")
        arch = found
    elif found is not None and found != arch:
        raise WeightsError(f"{path}: the checkpoint is an AdaFace {found}, but arch={arch} was asked for")
    with torch.device("meta"):  # no time spent initialising weights that are overwritten next
        net = AdaFaceNet(arch)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {_describe(missing)}"] if missing else []) + (
            [f"unexpected keys {_describe(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{path}: does not match AdaFace {arch}: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"{path}: does not match AdaFace {arch}: wrong shapes {_describe(wrong)}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaFaceConfig:
    """``path``: the checkpoint file (default: ``RunConfig.weights_dir`` / ``DEFAULT_FILES[arch]``,
    IR-101 first when ``arch`` is not given). ``arch``: ``ir_50`` or ``ir_101`` (default: read from
    the checkpoint's keys)."""

    path: Path | None = None
    arch: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        if self.arch is not None and self.arch not in ARCHS:
            raise ConfigError(f"face model 'adaface': arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")


class AdaFace:
    """AdaFace IR-50 / IR-101 (official checkpoints) in PyTorch.

    ``align`` warps faces to the ArcFace 112x112 template; ``embed`` takes those RGB chips in [0, 1]
    and returns the raw 512-d feature (BGR flip and normalisation happen inside); faces match when the
    cosine distance is below ``threshold`` = 0.7, i.e. a cosine similarity above 0.3, the value the
    AdaFace author suggests (github.com/mk-minchul/AdaFace/issues/161: "0.3 was a good number",
    from best verification accuracy on LFW, CFP-FP, ...), in line with deepface's 0.68 cosine-distance
    threshold for the same-family ArcFace model.
    """

    metric: ClassVar[DistanceMetric] = "cosine"
    threshold: ClassVar[float] = 0.7
    input_size: ClassVar[int] = CHIP_SIZE
    differentiable: ClassVar[bool] = True
    schemes: ClassVar[tuple[LandmarkScheme, ...]] = ("arcface5", "dlib5")

    def __init__(self, run: RunConfig, **options: Any) -> None:
        self.run = run
        self.config = build_config(AdaFaceConfig, options, "face model 'adaface'")
        self.net: AdaFaceNet | None = None

    def weights_path(self) -> Path:
        """The checkpoint to load, or a one-line ``WeightsError`` saying what to fetch."""
        if self.config.path is not None:
            if not self.config.path.is_file():
                raise WeightsError(f"face model 'adaface': weight file {self.config.path} not found; {HOW_TO_GET}")
            return self.config.path
        names = [DEFAULT_FILES[self.config.arch]] if self.config.arch else list(DEFAULT_FILES.values())
        folder = self.run.weights_dir
        if folder is not None:
            for name in names:
                if (Path(folder) / name).is_file():
                    return Path(folder) / name
        where = f"in {folder}" if folder is not None else "(no --weights-dir given)"
        raise WeightsError(f"face model 'adaface': missing weight file {' or '.join(names)} {where}; {HOW_TO_GET}")

    def load(self) -> None:
        if self.net is not None:
            return
        net = load_adaface(self.weights_path(), self.config.arch)
        self.net = net.to(self.run.torch_device(), self.run.torch_dtype())

    def _loaded(self) -> AdaFaceNet:
        if self.net is None:
            self.load()
        assert self.net is not None
        return self.net

    def align(self, images: Tensor, faces: Sequence[Face]) -> Tensor:
        """Chips [N,3,112,112] RGB in [0,1] on the ArcFace template, for ``faces`` of ``images`` [B,3,H,W]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"align expects images [B,3,H,W], got {tuple(images.shape)}")
        for face in faces:
            if face.scheme not in self.schemes:
                raise ConfigError(f"face model 'adaface' takes {' or '.join(self.schemes)} landmarks, "
                                  f"got {face.scheme}")
            if not 0 <= face.image_index < images.shape[0]:
                raise ConfigError(f"face image_index {face.image_index} outside the batch of {images.shape[0]}")
        return similarity_align(images, faces, ARCFACE_TEMPLATE_112, CHIP_SIZE)

    def embed(self, chips: Tensor) -> Tensor:
        """Chips [N,3,112,112] RGB in [0,1] -> raw features [N,512] (float32, not normalised)."""
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ConfigError(f"adaface embed expects chips [N,3,112,112], got {tuple(chips.shape)}")
        net = self._loaded()
        weight = net.input_layer[0].weight
        bgr = chips.flip(1).to(weight.device, weight.dtype)
        return net((bgr - 0.5) / 0.5).float()

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """1 - cosine similarity, row-wise [N]."""
        return 1 - F.cosine_similarity(a, b, dim=-1)


@hookimpl
def guardkit_register_face_models(register: Any) -> None:
    register("adaface", AdaFace, summary="AdaFace IR-50/IR-101 (official checkpoints, local file), PyTorch",
             weights=tuple(KnownWeight(file, "file", HOW_TO_GET, role=arch) for arch, file in DEFAULT_FILES.items()))
