"""Face-identity and pixel losses: per-sample objectives over a ``View``.

``face-cosine``: 1 - cos(embedding of the protected face, embedding of the clean face), averaged over
the faces (and EOT draws) of each photo. Higher = further from the person's own identity.
With target embeddings in the view (impersonation), it is cos(protected, target) instead, so that
maximising it pulls the face towards the target.
``face-distance``: the same in the face model's own metric (Euclidean for dlib).
``pixel-l2``: mean squared perturbation per photo (a cost: minimised).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from guardkit import hookimpl
from guardkit.errors import ConfigError
from guardkit.view import View


class _Options:
    """Built as every part is, ``Loss(run=None, **options)``; these losses need neither and take no options."""

    name: ClassVar[str] = ""

    def __init__(self, run: Any = None, **options: Any) -> None:
        if options:
            raise ConfigError(f"loss {self.name!r} takes no options, got {', '.join(sorted(options))}")


class FaceCosine(_Options):
    """Cosine dissimilarity to the clean identity (dodging), or similarity to a target (impersonation)."""

    name: ClassVar[str] = "face-cosine"
    maximize: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"face_model"})

    def __call__(self, view: View) -> torch.Tensor:
        if view.target_embeddings is not None:
            rows = F.cosine_similarity(view.embeddings, view.target_embeddings, dim=1)
        else:
            rows = 1 - F.cosine_similarity(view.embeddings, view.reference_embeddings, dim=1)
        return view.per_image_mean(rows)


class FaceDistance(_Options):
    """Distance to the clean identity in the face model's own metric; minus distance to a target."""

    name: ClassVar[str] = "face-distance"
    maximize: ClassVar[bool] = True
    needs: ClassVar[frozenset[str]] = frozenset({"face_model"})

    def __call__(self, view: View) -> torch.Tensor:
        model = view._require_face_model()
        if view.target_embeddings is not None:
            rows = -model.distance(view.embeddings, view.target_embeddings)
        else:
            rows = model.distance(view.embeddings, view.reference_embeddings)
        return view.per_image_mean(rows)


class PixelL2(_Options):
    """Mean squared perturbation of each photo, in [0, 1] pixel units."""

    name: ClassVar[str] = "pixel-l2"
    maximize: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()
    #: a cost on the perturbation itself: under EOT it sees the protected photo, not its purifications
    eot: ClassVar[bool] = False

    def __call__(self, view: View) -> torch.Tensor:
        return (view.adv - view.clean).pow(2).flatten(1).mean(dim=1)


@hookimpl
def guardkit_register_losses(register):
    register("face-cosine", FaceCosine, summary="1 - cosine to the clean face embedding (per photo)")
    register("face-distance", FaceDistance, summary="distance to the clean face in the model's own metric")
    register("pixel-l2", PixelL2, summary="mean squared perturbation (minimised)")
