"""Face model ``dlib``: dlib's ResNet-29 face descriptor, ported to PyTorch so that gradients reach the photo.

The network is ``dlib_network.py``; its trained weights are read straight from dlib's own
``dlib_face_recognition_resnet_model_v1.dat`` (CC0) by ``dlib_dat.py``; the chip geometry is a
differentiable copy of dlib's (``dlib_chip.py``), so ``embed(align(photo, faces))`` is what
``compute_face_descriptor(photo, shape)`` computes, to within float rounding. dlib is not imported.

Facts and sources: ``shared/reference/dlib.md``; dlib's ``dnn/core.h``, ``dnn/layers.h``,
``dnn/input.h``, ``cuda/tensor.h``, ``serialize.h``, ``image_transforms/interpolation.h``,
``image_transforms/image_pyramid.h`` and ``tools/python/src/face_recognition.cpp``.

Example::

    model = DlibFaceModel(RunConfig()); model.load()
    chips = model.align(photos, faces)            # [N,3,150,150] in [0,1]
    d = model.distance(model.embed(chips), ref)   # Euclidean; same person below 0.6
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.errors import ConfigError
from guardkit.types import DistanceMetric, Face, LandmarkScheme
from guardkit.weights import DLIB_HOW_TO_GET, KnownWeight, WeightFile, locate_dlib_file

from .dlib_chip import CHIP_SIZE, dlib_jitter, extract_chip, face_chip_details, plan_chip
from .dlib_dat import load_dlib_resnet
from .dlib_network import DlibResNet

DLIB_RESNET = WeightFile("dlib_face_recognition_resnet_model_v1.dat",
                         "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30", DLIB_HOW_TO_GET)


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
    register("dlib", DlibFaceModel, summary="dlib ResNet-29 face descriptor (CC0, offline), PyTorch port",
             weights=(KnownWeight.of(DLIB_RESNET, "dlib"),))
