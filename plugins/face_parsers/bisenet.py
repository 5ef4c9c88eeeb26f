"""Face parser ``bisenet``: pixel-accurate face regions from BiSeNet (Yu et al., ECCV 2018,
https://arxiv.org/abs/1808.00897) as trained on CelebAMask-HQ by face-parsing.PyTorch
(github.com/zllrunning/face-parsing.PyTorch, the released ``79999_iter.pth``).

The network is that repository's ``BiSeNet(n_classes=19)`` (``model.py``, ``resnet.py``), rebuilt here
with the same module names so that the released state dict loads with ``strict=True``:

- ``cp`` (ContextPath): ``cp.resnet`` a ResNet-18 without its classifier (``conv1``, ``bn1``,
  ``layer1..4``, each block ``conv1/bn1/conv2/bn2`` plus ``downsample.0/.1`` where the width or stride
  changes) giving features at 1/8, 1/16, 1/32; ``cp.arm16`` / ``cp.arm32`` attention refinement
  modules (``conv`` = ConvBNReLU, ``conv_atten``, ``bn_atten``); ``cp.conv_head32``,
  ``cp.conv_head16``, ``cp.conv_avg`` (ConvBNReLU: ``conv`` + ``bn``, no conv bias);
- ``ffm`` (FeatureFusionModule 256 -> 256: ``convblk``, ``conv1``, ``conv2``); the spatial path is
  the ResNet's 1/8 feature, as in the released model;
- ``conv_out`` (256 -> 256 -> 19), ``conv_out16`` and ``conv_out32`` (128 -> 64 -> 19): BiSeNetOutput
  heads (``conv`` = ConvBNReLU, ``conv_out`` 1x1). Only ``conv_out`` is used at inference; the two
  auxiliary heads exist so the file loads strictly.

Input: RGB in [0, 1], resized to ``size`` x ``size`` (512 as trained), ImageNet mean/std. The main
head's logits are upsampled (bilinear, ``align_corners=True``, as the original) to the network input
size and turned into class probabilities by a softmax; ``hard=True`` takes the argmax class per pixel
(one-hot) once the probabilities are back at the photo's size.

Classes (CelebAMask-HQ): 0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g
(glasses), 7 l_ear, 8 r_ear, 9 ear_r (earring), 10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck,
15 neck_l (necklace), 16 cloth, 17 hair, 18 hat.

Regions (the landmark parser's names; each ``[1,1,H,W]`` in [0, 1]) are class probabilities summed
per group:

==============  =====================================================  ===================================
region          classes                                                note
==============  =====================================================  ===================================
``skin``        1                                                      face skin (nose excluded)
``brows``       2, 3
``eyes``        4, 5
``glasses``     6                                                      the frames/lenses as labelled
``nose``        10
``lips``        11, 12, 13                                             mouth interior + both lips
``hair``        17
``face``        1-6, 10-13                                             skin + features (no ears, no hair)
``head``        1-13, 17, 18                                           face + ears, earrings, hair, hat
``background``  0, 14, 15, 16                                          background, neck, necklace, cloth
``beard``       part of 1 below the nose line                          see below
==============  =====================================================  ===================================

``skin, brows, eyes, glasses, nose, lips, hair, background`` are disjoint class sets, so they sum to at
most 1 per pixel, and ``head + background == 1``. Neck and clothes count as background, as in the
landmark parser, whose ``background`` is ``1 - head``. CelebAMask-HQ has no beard class (a beard is
labelled skin), so ``beard`` is the skin probability times the landmark parser's soft "below the nose"
gate of each face (zero without faces).

Crops: the network was trained on CelebA-HQ crops (a square of about four eye distances around the
face, upright). With ``crop=True`` (default) and faces given, each face is cut out that way from its
5 landmarks (rotated upright, never mirrored), parsed, and its probabilities warped back onto the
photo; where crops overlap they are blended with weights that fall to zero at each crop's edge, and
pixels outside every crop are background. Without faces, or with ``crop=False``, the whole photo is
resized to ``size`` x ``size`` and parsed (right for photos that already are face crops).

Weights: ``79999_iter.pth`` from the face-parsing.PyTorch README, put in ``--weights-dir`` (or give
``path=``). It is read with ``torch.load(..., weights_only=True)`` only; a file holding other pickled
objects is refused.

Example::

    parser = BiSeNetParser(RunConfig(weights_dir=Path("weights"))); parser.load()
    regions = parser.parse(photo, faces)            # photo [1,3,H,W] in [0,1]
    mask = torch.maximum(regions["hair"], regions["brows"])
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError, WeightsError, first_line
from guardkit.face_regions import REGIONS, face_frame
from guardkit.types import Face
from guardkit.weights import KnownWeight
from torch import Tensor, nn

DEFAULT_FILE = "79999_iter.pth"
HOW_TO_GET = ("fetch face-parsing.PyTorch's 79999_iter.pth (the BiSeNet CelebAMask-HQ model linked from "
              "github.com/zllrunning/face-parsing.PyTorch) and put it in --weights-dir, or pass path=FILE")
N_CLASSES = 19
CLASSES: tuple[str, ...] = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear",
                            "r_ear", "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth",
                            "hair", "hat")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: region -> CelebAMask-HQ classes whose probabilities it sums (``beard`` is derived from ``skin``).
REGION_CLASSES: dict[str, tuple[int, ...]] = {
    "skin": (1,),
    "brows": (2, 3),
    "eyes": (4, 5),
    "glasses": (6,),
    "nose": (10,),
    "lips": (11, 12, 13),
    "hair": (17,),
    "face": (1, 2, 3, 4, 5, 6, 10, 11, 12, 13),
    "head": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18),
    "background": (0, 14, 15, 16),
}
#: Regions made of disjoint class sets: they sum to at most 1 per pixel.
DISJOINT_REGIONS: tuple[str, ...] = ("skin", "brows", "eyes", "glasses", "nose", "lips", "hair", "background")


# ---------------------------------------------------------------------------------------------
# The network (face-parsing.PyTorch model.py / resnet.py, same module names)
# ---------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Module):
    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_chan: int, out_chan: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample: nn.Module | None = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_chan, out_chan, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_chan))

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _stage(in_chan: int, out_chan: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_chan, out_chan, stride), BasicBlock(out_chan, out_chan, 1))


class ResNet18(nn.Module):
    """ResNet-18 trunk (no pooling head, no ``fc``) -> features at 1/8, 1/16, 1/32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))  # broadcast == nearest upsampling of 1x1
        feat32_up = self.conv_head32(F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest"))
        feat16_up = self.conv_head16(F.interpolate(self.arm16(feat16) + feat32_up, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, 1, bias=False)

    def forward(self, fsp: Tensor, fcp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, in_chan: int, mid_chan: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """face-parsing.PyTorch's BiSeNet. ``forward(x)`` -> main-head logits [B,C,H,W] at the input size
    (``aux=True`` also returns the two auxiliary heads' logits, as the original's training forward)."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: Tensor, aux: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        out = F.interpolate(self.conv_out(self.ffm(feat8, feat_cp8)), size, mode="bilinear", align_corners=True)
        if not aux:
            return out
        out16 = F.interpolate(self.conv_out16(feat_cp8), size, mode="bilinear", align_corners=True)
        out32 = F.interpolate(self.conv_out32(feat_cp16), size, mode="bilinear", align_corners=True)
        return out, out16, out32


# ---------------------------------------------------------------------------------------------
# Loading (safe only, strict)
# ---------------------------------------------------------------------------------------------


def _describe(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _read_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise WeightsError(
                f"{path}: refused to load: the file holds pickled Python objects (it contains {found.group(1)}) "
                "that safe loading (torch.load weights_only=True) does not allow; if you trust it, re-save "
                "only its state dict"
            ) from exc
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint (weights_only=True: {first_line(exc)})") from exc
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {first_line(exc)})") from exc


def bisenet_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a BiSeNet checkpoint: a plain state dict (as released), one under ``state_dict``,
    or one saved from ``DataParallel`` (``module.*`` keys)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path}: not a BiSeNet state dict (expected a dict of tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_bisenet(path: Path) -> BiSeNet:
    """The released network from ``path``, checked key by key and loaded with ``strict=True``; on the
    CPU in float32, eval mode, no gradients. Every problem is a one-line ``WeightsError`` naming the file.

    BatchNorm's ``num_batches_tracked`` counters are optional (files saved by old PyTorch lack them)."""
    state = bisenet_state_dict(_read_file(path), path)
    with torch.device("meta"):
        net = BiSeNet(N_CLASSES)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {_describe(missing)}"] if missing else []) + (
            [f"unexpected keys {_describe(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{path}: does not match face-parsing.PyTorch BiSeNet: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"{path}: does not match face-parsing.PyTorch BiSeNet: wrong shapes {_describe(wrong)}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for k, v in expected.items():  # a real (not meta) counter where the file has none
        if k not in state:
            state[k] = torch.zeros((), dtype=v.dtype)
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# The part
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiSeNetParserConfig:
    """``path``: the weight file (default ``RunConfig.weights_dir / "79999_iter.pth"``). ``size``: the
    network's input side in pixels (512 as trained; smaller is faster and coarser). ``crop``: parse each
    face in its own CelebA-HQ-style crop (see the module docstring) rather than the whole photo.
    ``crop_scale``: the crop's side in multiples of the CelebA-HQ crop. ``hard``: one-hot argmax classes
    (at the photo's size) instead of soft probabilities."""

    path: Path | None = None
    size: int = 512
    crop: bool = True
    crop_scale: float = 1.0
    hard: bool = False

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        if int(self.size) != self.size or self.size < 32:
            raise ConfigError(f"face parser 'bisenet': size must be an integer >= 32, got {self.size!r}")
        if not self.crop_scale > 0:
            raise ConfigError(f"face parser 'bisenet': crop_scale must be > 0, got {self.crop_scale!r}")


class BiSeNetParser:
    """Face regions from face-parsing.PyTorch's BiSeNet (CelebAMask-HQ, 19 classes); see the module docstring."""

    name: ClassVar[str] = "bisenet"
    differentiable: ClassVar[bool] = False
    schemes: ClassVar[tuple[str, ...]] = ("dlib5", "arcface5")
    regions: ClassVar[tuple[str, ...]] = REGIONS

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config: BiSeNetParserConfig = build_config(BiSeNetParserConfig, options)
        self.net: BiSeNet | None = None

    @classmethod
    def random(cls, run: RunConfig | None = None, seed: int = 0, **options: Any) -> BiSeNetParser:
        """The architecture with seeded random weights, loaded: for tests and benchmarks only."""
        part = cls(run, **options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = BiSeNet(N_CLASSES)
        part.net = net.to(part.run.torch_device()).eval().requires_grad_(False)
        return part

    def weights_path(self) -> Path:
        if self.config.path is not None:
            path = Path(self.config.path).expanduser()
        elif self.run.weights_dir is not None:
            path = Path(self.run.weights_dir).expanduser() / DEFAULT_FILE
        else:
            raise WeightsError(f"face parser 'bisenet' needs {DEFAULT_FILE} and no --weights-dir was given: {HOW_TO_GET}")
        if not path.is_file():
            raise WeightsError(f"missing BiSeNet weight file {path}: {HOW_TO_GET}")
        return path

    def load(self) -> None:
        if self.net is not None:
            return
        self.net = load_bisenet(self.weights_path()).to(self.run.torch_device())

    # -- network on one square input ----------------------------------------------------------

    def class_probabilities(self, square: Tensor) -> Tensor:
        """square [N,3,S,S] RGB in [0,1], S == ``size`` -> class probabilities [N,19,S,S] (sum 1)."""
        if self.net is None:
            self.load()
        assert self.net is not None
        mean = square.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = square.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return self.net((square - mean) / std).softmax(1)

    # -- crops ----------------------------------------------------------------------------------

    def _crop_frame(self, face: Face) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float], float]:
        """Centre, x axis, y axis (unit vectors, y pointing to the chin, never mirrored) and half side
        (pixels) of the face's CelebA-HQ crop: centre at eyes + 0.1 eye-to-mouth, half side
        max(2 x eye distance, 1.8 x eye-to-mouth distance) (Karras et al. 2018, CelebA-HQ)."""
        f = face_frame(face)
        vx, vy = f["v"]
        d, mouth_v = f["d"], f["mouth_v"]
        centre = (f["origin"][0] + 0.1 * mouth_v * d * vx, f["origin"][1] + 0.1 * mouth_v * d * vy)
        half = max(2.0 * d, 1.8 * abs(mouth_v) * d) * self.config.crop_scale
        return centre, (vy, -vx), (vx, vy), half

    def _parse_crops(self, image: Tensor, faces: Sequence[Face]) -> Tensor:
        """Class probabilities [1,19,H,W] of the photo, blended from one crop per face."""
        _, _, height, width = image.shape
        size = int(self.config.size)
        dev, dt = image.device, image.dtype
        ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dt) + 0.5,
                                torch.arange(width, device=dev, dtype=dt) + 0.5, indexing="ij")
        total = torch.zeros(1, N_CLASSES, height, width, device=dev, dtype=dt)
        weight = torch.zeros(1, 1, height, width, device=dev, dtype=dt)
        for face in faces:
            (cx, cy), (ax, ay), (bx, by), half = self._crop_frame(face)
            # crop -> photo: normalised crop coords (a, b) in [-1, 1] land at centre + half * (a*x + b*y)
            theta = torch.tensor([[2 * half * ax / width, 2 * half * bx / width, 2 * cx / width - 1],
                                  [2 * half * ay / height, 2 * half * by / height, 2 * cy / height - 1]],
                                 device=dev, dtype=dt)[None]
            grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
            crop = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            probs = self.class_probabilities(crop.clamp(0, 1))
            # photo -> crop: each photo pixel's normalised coords in the crop, to pull the probabilities back
            a = ((xs - cx) * ax + (ys - cy) * ay) / half
            b = ((xs - cx) * bx + (ys - cy) * by) / half
            back = F.grid_sample(probs, torch.stack([a, b], -1)[None], mode="bilinear", padding_mode="zeros",
                                 align_corners=False)
            w = (1 - torch.maximum(a.abs(), b.abs())).clamp(min=0)[None, None]
            total = total + w * back
            weight = weight + w
        background = torch.zeros_like(total)
        background[:, 0] = 1
        eps = 1e-6  # pixels outside every crop are background
        return (total + eps * background) / (weight + eps)

    def _parse_whole(self, image: Tensor) -> Tensor:
        size = int(self.config.size)
        _, _, height, width = image.shape
        square = F.interpolate(image, (size, size), mode="bilinear", align_corners=False, antialias=True)
        probs = self.class_probabilities(square.clamp(0, 1))
        return F.interpolate(probs, (height, width), mode="bilinear", align_corners=False)

    def parse(self, image: Tensor, faces: Sequence[Face]) -> dict[str, Tensor]:
        """image [1,3,H,W] RGB in [0,1] -> {region: soft mask [1,1,H,W] in [0,1]} on image's device."""
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ConfigError(f"face parser 'bisenet' expects one RGB image [1,3,H,W], got {tuple(image.shape)}")
        if self.net is None:
            self.load()
        device = self.run.torch_device()
        with torch.no_grad():
            photo = image.detach().to(device=device, dtype=torch.float32)
            if self.config.crop and faces:
                probs = self._parse_crops(photo, faces)
            else:
                probs = self._parse_whole(photo)
            if self.config.hard:  # argmax at the photo's size, so the masks are exactly 0 or 1
                probs = F.one_hot(probs.argmax(1), N_CLASSES).permute(0, 3, 1, 2).to(probs.dtype)
            out = {name: probs[:, list(classes)].sum(1, keepdim=True) for name, classes in REGION_CLASSES.items()}
            out["beard"] = out["skin"] * self._below_nose(faces, photo.shape[-2], photo.shape[-1], device)
        return {name: out[name].clamp(0, 1).to(device=image.device, dtype=image.dtype) for name in REGIONS}

    @staticmethod
    def _below_nose(faces: Sequence[Face], height: int, width: int, device: torch.device) -> Tensor:
        """The landmark parser's soft beard gate (below the nose line), maximum over faces; zeros without faces."""
        gate = torch.zeros(1, 1, height, width, device=device)
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                                torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
        for face in faces:
            f = face_frame(face)
            v = ((xs - f["origin"][0]) * f["v"][0] + (ys - f["origin"][1]) * f["v"][1]) / f["d"]
            gate = torch.maximum(gate, torch.sigmoid((v - (f["nose_v"] + 0.05)) / 0.06)[None, None])
        return gate


def parameter_count() -> int:
    """Trainable parameters of the released architecture (BN running statistics not counted)."""
    with torch.device("meta"):
        return sum(p.numel() for p in BiSeNet(N_CLASSES).parameters())


@hookimpl
def guardkit_register_face_parsers(register: Any) -> None:
    register("bisenet", BiSeNetParser,
             summary=f"BiSeNet CelebAMask-HQ face parsing (face-parsing.PyTorch {DEFAULT_FILE}; local weights)",
             weights=(KnownWeight(DEFAULT_FILE, "file", HOW_TO_GET),))
