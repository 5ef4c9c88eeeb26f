"""Face model ``arcface``: insightface ArcFace (IResNet) recognition, scored in onnxruntime, attacked in PyTorch.

insightface ships its recognition networks only as ONNX files (buffalo_l ``w600k_r50.onnx``,
antelopev2 ``glintr100.onnx``). onnxruntime gives no gradients, so the same weights are rebuilt as a
PyTorch IResNet (``arcface_iresnet.py``) by walking the ONNX graph (``arcface_graph.py``).

``embed`` is the differentiable PyTorch network; ``embed_onnx`` runs the untouched file in
onnxruntime (one session, made in ``load``) and is what a scorer should trust. Both take chips in
[0, 1] RGB and apply insightface's own input convention: RGB, ``(x * 255 - 127.5) / 127.5``
(``ArcFaceONNX``: ``input_mean = input_std = 127.5`` for graphs without a leading Sub/Mul, and
``cv2.dnn.blobFromImages(..., swapRB=True)`` on BGR photos, i.e. the network sees RGB).

Example::

    model = ArcFaceONNX(RunConfig(weights_dir=Path("models"))); model.load()
    chips = model.align(photos, faces)                 # [N,3,112,112] in [0,1]
    d = model.distance(model.embed(chips), ref)        # 1 - cosine; same person below 0.8
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from guardkit import hookimpl
from guardkit.align import ARCFACE_TEMPLATE_112, similarity_align
from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.types import DistanceMetric, Face, LandmarkScheme
from guardkit.weights import KnownWeight, locate_insightface_file

from .arcface_graph import load_arcface_onnx
from .arcface_iresnet import CHIP_SIZE, IResNet

__all__ = ["ArcFaceConfig", "ArcFaceONNX", "IResNet", "load_arcface_onnx"]

INPUT_MEAN = 127.5
INPUT_STD = 127.5

#: Where insightface's model packs put each file (``~/.insightface/models/<pack>/<file>``).
KNOWN_FILES = {"w600k_r50.onnx": "buffalo_l", "glintr100.onnx": "antelopev2"}


@dataclass(frozen=True)
class ArcFaceConfig:
    """``path``: the ONNX file (overrides the lookup). ``file``: the file name looked up in
    ``RunConfig.weights_dir`` and then in ``~/.insightface/models/<pack>/`` (read only).
    ``pack``: insightface's model pack holding ``file`` (derived for the known files)."""

    path: str | None = None
    file: str = "w600k_r50.onnx"
    pack: str | None = None


class ArcFaceONNX:
    """insightface ArcFace (IResNet-50/100 ONNX). Metric: ``1 - cosine``; same person below 0.8.

    ``embed`` (PyTorch, differentiable) and ``embed_onnx`` (onnxruntime, the file itself) agree to
    float rounding. The PyTorch network runs in float32 on the run's device.
    """

    metric: ClassVar[DistanceMetric] = "cosine"
    #: Distance ``1 - cos``. insightface's own verification demo (web-demos/src_recognition/main.py,
    #: for buffalo_l's w600k_r50 via ArcFaceONNX.compute_sim) says "NOT the same person" below cosine
    #: similarity 0.2, "LIKELY" in [0.2, 0.28) and "ARE the same person" from 0.28. We take the
    #: lenient end, similarity 0.2 (distance 0.8), so a photo counts as protected only once insightface
    #: itself would call the pair different people.
    threshold: ClassVar[float] = 0.8
    input_size: ClassVar[int] = CHIP_SIZE
    differentiable: ClassVar[bool] = True
    schemes: ClassVar[tuple[LandmarkScheme, ...]] = ("arcface5", "dlib5")

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        try:
            self.config = ArcFaceConfig(**options)
        except TypeError as exc:
            raise ConfigError(f"face model 'arcface': bad options {sorted(options)} ({exc})") from exc
        self.run = run or RunConfig()
        self.net: IResNet | None = None
        self.session: Any = None
        self.path: Path | None = None
        self._batch: int | None = None

    def weights_path(self) -> Path:
        if self.config.path is not None:
            path = Path(self.config.path).expanduser()
            if not path.is_file():
                raise WeightsError(f"missing ArcFace weight file {path}: pass the path of an insightface "
                                   f"recognition .onnx (e.g. buffalo_l's w600k_r50.onnx)")
            return path
        pack = self.config.pack or KNOWN_FILES.get(self.config.file)
        return locate_insightface_file(self.config.file, pack, self.run.weights_dir, "ArcFace")

    @classmethod
    def random(cls, run: RunConfig | None = None, *, seed: int = 0, layers: tuple[int, ...] = (3, 4, 14, 3),
               **options: Any) -> "ArcFaceONNX":
        """IResNet (default: the buffalo_l IResNet-50 layout) with seeded random weights, loaded: for
        benchmarks and tests, where timing does not depend on weight values. ``embed_onnx`` is unavailable."""
        part = cls(run, **options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = IResNet(layers, fused=True)
        part.net = net.to(part.run.torch_device()).eval().requires_grad_(False)
        return part

    def load(self) -> None:
        if self.net is not None:
            return
        path = self.weights_path()
        _, net, batch = load_arcface_onnx(path)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise WeightsError("face model 'arcface' needs onnxruntime: pip install onnxruntime") from exc
        device = self.run.torch_device()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if self.run.threads:
            options.intra_op_num_threads = self.run.threads
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = (str(exc).strip().splitlines() or [""])[0]
            raise WeightsError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {first})") from exc
        self.providers = session.get_providers()  # CUDA may have fallen back to CPU: this says what runs
        self.session, self.path, self._batch = session, path, batch
        self.net = net.to(device)

    def _loaded(self) -> IResNet:
        if self.net is None:
            self.load()
        assert self.net is not None
        return self.net

    @staticmethod
    def normalize(chips: Tensor) -> Tensor:
        """[0,1] RGB chips -> the network's input: ``(x * 255 - 127.5) / 127.5``."""
        return (chips * 255.0 - INPUT_MEAN) / INPUT_STD

    def _check_chips(self, chips: Tensor) -> None:
        if chips.ndim != 4 or tuple(chips.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ConfigError(f"arcface embed expects chips [N,3,112,112], got {tuple(chips.shape)}")

    def align(self, images: Tensor, faces: Sequence[Face]) -> Tensor:
        """Chips [N,3,112,112] in [0,1]: insightface's 5-point similarity warp (``norm_crop``), bilinear."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"align expects images [B,3,H,W], got {tuple(images.shape)}")
        for face in faces:
            if face.scheme not in self.schemes:
                raise ConfigError(f"face model 'arcface' cannot align {face.scheme} landmarks")
            if not 0 <= face.image_index < images.shape[0]:
                raise ConfigError(f"face image_index {face.image_index} outside the batch of {images.shape[0]}")
        return similarity_align(images, faces, ARCFACE_TEMPLATE_112, CHIP_SIZE)

    def embed(self, chips: Tensor) -> Tensor:
        """Chips [N,3,112,112] in [0,1] -> raw embeddings [N,512] (PyTorch, differentiable)."""
        self._check_chips(chips)
        net = self._loaded()
        return net(self.normalize(chips.to(net.fc.weight.device, torch.float32)))

    @torch.no_grad()
    def embed_onnx(self, chips: Tensor) -> Tensor:
        """Chips [N,3,112,112] in [0,1] -> raw embeddings [N,512] from onnxruntime (no gradients)."""
        self._check_chips(chips)
        self._loaded()
        x = self.normalize(chips.detach().float()).cpu().numpy()
        name = self.session.get_inputs()[0].name
        step = self._batch or max(len(x), 1)
        outs = []
        for start in range(0, len(x), step):
            part = x[start : start + step]
            if self._batch and len(part) < step:  # a graph with a fixed batch: pad the last chunk
                part = np.concatenate([part, np.zeros((step - len(part), *part.shape[1:]), part.dtype)])
            outs.append(self.session.run(None, {name: np.ascontiguousarray(part)})[0][: len(x) - start])
        if not outs:
            return chips.new_zeros((0, self._loaded().embedding), dtype=torch.float32)
        return torch.from_numpy(np.concatenate(outs).astype(np.float32)).to(chips.device)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return 1 - F.cosine_similarity(a, b, dim=-1)


@hookimpl
def guardkit_register_face_models(register: Any) -> None:
    register("arcface", ArcFaceONNX, summary="insightface ArcFace IResNet (buffalo_l w600k_r50 ONNX), PyTorch rebuild",
             weights=(KnownWeight("w600k_r50.onnx", "insightface", "insightface buffalo_l model pack",
                                  pack="buffalo_l"),))
