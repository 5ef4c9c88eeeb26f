"""The data that flows between parts, and the contract of each plugin kind.

Every kind is a ``typing.Protocol``. A part is registered as a *factory* (normally its class); class
attributes declare its capabilities so the engine can check them before any weight is loaded.
Parts are built as ``factory(run_config, **options)`` (cheap) and then ``part.load()`` loads weights
onto ``run_config.device``.

Tensors are batched from the first line: images are ``[B, 3, H, W]`` float in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep this module free of torch at import time
    import numpy as np
    import torch

    from guardkit.config import Budget
    from guardkit.view import View
    from guardkit.weights import KnownWeight

Point = tuple[float, float]
DistanceMetric = Literal["euclidean", "cosine"]
LandmarkScheme = Literal["dlib5", "arcface5"]


@dataclass(frozen=True)
class Face:
    """One face found in one photo of a batch.

    ``landmarks`` are 5 points in pixel coordinates (x, y) of the photo, in the order of ``scheme``:
    ``dlib5`` is dlib's 5-point model (right-eye outer & inner corner, left-eye outer & inner corner,
    below the nose, as dlib numbers them); ``arcface5`` is insightface's (left eye, right eye, nose,
    left mouth corner, right mouth corner).
    """

    image_index: int
    box: tuple[float, float, float, float]  # left, top, right, bottom
    landmarks: tuple[Point, Point, Point, Point, Point]
    scheme: LandmarkScheme
    score: float = 1.0
    finder: str = ""  # the face finder that found it (an ensemble's models each read their own finder's faces)

    def with_index(self, image_index: int) -> "Face":
        return replace(self, image_index=image_index)


@runtime_checkable
class Part(Protocol):
    """What every part has. ``load`` loads weights on the run's device; it is idempotent."""

    def load(self) -> None: ...


class FaceFinder(Part, Protocol):
    """Finds every face in one photo. Not differentiable; run once on the clean photo."""

    scheme: ClassVar[LandmarkScheme]

    def find(self, image: "np.ndarray") -> list[Face]:
        """``image``: HxWx3 uint8 RGB. Returns faces with ``image_index`` 0, biggest first."""
        ...


class FaceModel(Part, Protocol):
    """A face recognition model. It never sees a raw photo: ``align`` warps faces to its own chip."""

    metric: ClassVar[DistanceMetric]
    threshold: ClassVar[float]  # the model's own match threshold, in its own metric
    input_size: ClassVar[int]
    differentiable: ClassVar[bool]
    schemes: ClassVar[tuple[LandmarkScheme, ...]]  # landmark schemes `align` accepts
    default_finder: ClassVar[str]  # the face finder whose boxes and landmarks it was trained on

    def align(self, images: "torch.Tensor", faces: Sequence[Face]) -> "torch.Tensor":
        """Differentiable warp of ``faces`` out of ``images`` [B,3,H,W] -> chips [N,3,S,S] in [0,1]."""
        ...

    def embed(self, chips: "torch.Tensor") -> "torch.Tensor":
        """Chips [N,3,S,S] in [0,1] -> raw embeddings [N,D] (not normalised)."""
        ...

    def distance(self, a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        """Row-wise distance [N] in the model's own metric (compare with ``threshold``)."""
        ...


class Encoder(Part, Protocol):
    """A differentiable image autoencoder (latent diffusion VAE)."""

    differentiable: ClassVar[bool]
    latent_channels: ClassVar[int]
    downsample: ClassVar[int]

    def encode(self, x: "torch.Tensor") -> "torch.Tensor":
        """x [B,3,H,W] in [-1,1] -> latent z."""
        ...

    def decode(self, z: "torch.Tensor") -> "torch.Tensor":
        """latent z -> x [B,3,H,W] in [-1,1]."""
        ...


class Editor(Part, Protocol):
    """Edits photos under a text prompt (diffusion editors)."""

    def edit(self, images: "torch.Tensor", prompt: str, *, seed: int) -> "torch.Tensor": ...


class Purifier(Part, Protocol):
    """A transformation an adversary (or a careless re-save) applies to a protected photo.

    Built as ``factory(run, **options)``; ``purify`` is deterministic for a given generator.
    """

    differentiable: ClassVar[bool]  # usable inside the loop as an EOT transform with gradients

    def purify(self, images: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
        """[B,3,H,W] in [0,1] -> [B,3,H',W'] in [0,1] (same size unless the purifier resizes)."""
        ...


@dataclass
class EvalBatch:
    """What a metric scores: one batch of evaluation samples (all [B,3,H,W] in [0,1], same size).

    ``source``: the clean photo; ``protected``: after protection (and purification);
    ``edited``: the editor's output on ``protected``; ``edited_clean``: its output on ``source``
    with the same seed; ``prompt``: the edit instruction; ``faces``: faces of ``source``.
    """

    source: "torch.Tensor"
    protected: "torch.Tensor"
    edited: "torch.Tensor"
    edited_clean: "torch.Tensor"
    prompt: str
    faces: Sequence[Face] = ()


class Metric(Part, Protocol):
    """A per-sample score. ``higher_is_better`` says which way is better *for the protection*."""

    higher_is_better: ClassVar[bool]

    def score(self, batch: EvalBatch) -> "torch.Tensor":
        """-> Tensor [B] (NaN where a sample cannot be scored, e.g. no face)."""
        ...


class FaceParser(Part, Protocol):
    """Splits faces into regions (hair, skin, eyes, brows, lips, nose, glasses, beard, background)."""

    def parse(self, image: "torch.Tensor", faces: Sequence[Face]) -> dict[str, "torch.Tensor"]:
        """image [1,3,H,W] -> {region: soft mask [1,1,H,W] in [0,1]}."""
        ...


class Loss(Protocol):
    """A per-sample objective. ``maximize`` says which way is more protection."""

    maximize: ClassVar[bool]
    needs: ClassVar[frozenset[str]]  # parts it reads from the view: "face_model", "encoder"

    def __call__(self, view: "View") -> "torch.Tensor":
        """-> Tensor [B], one value per photo of the batch."""
        ...


class WeightedLoss(NamedTuple):
    """One term of a method's objective: ``weight * loss(view)``, signed by ``loss.maximize``."""

    weight: float
    loss: Loss
    name: str = ""


class Method(Protocol):
    """A protection recipe. Parts are injected at construction.

    ``protect`` returns the protected batch; the engine projects it onto the budget and [0, 1]
    again, whatever the method returns.
    """

    needs: ClassVar[frozenset[str]]  # parts it must be given: "face_model", "encoder", ...
    needs_gradients: ClassVar[bool]
    # Optional: the engine and ``guardkit methods`` read these with getattr; a method that leaves one out
    # gets the default named here.
    default_steps: ClassVar[int]  # steps when neither --steps nor a strength is given; default: the run's budget.steps
    default_losses: ClassVar[dict[str, float]]  # loss name -> weight when --loss is not given; default {} (none)
    starts: ClassVar[dict[str, float]]  # loss name -> share of the steps before the term joins; default {} (step 0)
    config_class: ClassVar[type]  # frozen dataclass of its options (-O key=value); default: none (no options)
    notes: dict[int, str]  # after protect: one line to report per photo of the batch (by index); default: none

    def protect(self, images: "torch.Tensor", faces: Sequence[Face], budget: "Budget") -> "torch.Tensor": ...


@dataclass(frozen=True)
class PartSpec:
    """One registered part: ``name`` is unique within ``kind``; ``origin`` is the plugin that gave it."""

    kind: str
    name: str
    factory: Any
    summary: str = ""
    origin: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    weights: tuple["KnownWeight", ...] = ()  # the weight sources it declared, for ``guardkit models``
