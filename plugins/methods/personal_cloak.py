"""Method ``personal-cloak``: put a person's enrolled cloak (``guardkit enroll``) on new photos of them.

No optimisation and no face recognition model: each chosen face gets the cloak warped onto it through
its landmarks (``guardkit.cloak.place``), feathered, within the cloak's L-inf budget and whole-photo PSNR
floor, rounded to the saved 8-bit grid. It costs the face finder plus a few milliseconds.

Example: ``guardkit enroll me1.jpg me2.jpg me3.jpg -o me.cloak`` then ``guardkit run --cloak me.cloak new.jpg -o out/``
(``--cloak`` sets the run up from the file: this method, the cloak's own finder and its budget; a run whose
L-inf budget is below the cloak's clips it, and the photo's note says so).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from guardkit import hookimpl
from guardkit.cloak import Cloak, choose_faces, place
from guardkit.cloak_file import load_cloak
from guardkit.config import Budget, RunConfig
from guardkit.transfer import fit_quantized
from guardkit.types import Face, WeightedLoss
from guardkit.visibility import l2_cap


class PersonalCloak:
    """Applies a ``Cloak`` (or the path of a ``.cloak`` file, option ``cloak``) to the ``face`` faces of each
    photo: ``largest`` (default), ``all`` or ``N`` (the N-th largest)."""

    needs: ClassVar[frozenset[str]] = frozenset({"face_finder"})
    needs_gradients: ClassVar[bool] = False
    default_losses: ClassVar[dict[str, float]] = {}
    default_steps: ClassVar[int] = 0
    applies_cloak: ClassVar[bool] = True

    def __init__(self, run: RunConfig, *, losses: Sequence[WeightedLoss] = (), cloak: Cloak | str | Path | None = None,
                 face: str = "largest", **options: Any) -> None:
        if cloak is None:
            raise ValueError("personal-cloak needs a cloak: -O cloak=me.cloak (made by guardkit enroll)")
        if options:
            raise ValueError(f"personal-cloak takes the options cloak and face, got {', '.join(sorted(options))}")
        self.run = run
        self.cloak = cloak if isinstance(cloak, Cloak) else load_cloak(cloak)
        self.face = str(face)
        choose_faces([], self.face)  # a bad --face is a one-line error before any photo
        self.notes: dict[int, str] = {}

    def protect(self, images: torch.Tensor, faces: Sequence[Face], budget: Budget) -> torch.Tensor:
        by_photo: dict[int, list[Face]] = defaultdict(list)
        for face in faces:
            by_photo[face.image_index].append(face)
        out = images.clone()
        self.notes = {}
        for index in range(images.shape[0]):
            found = by_photo.get(index, [])
            chosen = choose_faces(found, self.face)
            if not chosen:
                continue
            image = images[index].float()
            delta = place(self.cloak, image, chosen)
            clipped = budget.eps < self.cloak.eps
            delta = delta.clamp(-budget.eps, budget.eps)
            cap = math.inf
            if self.cloak.psnr_floor > 0:
                cap = l2_cap(self.cloak.psnr_floor, image.numel())
            out[index] = fit_quantized(image[None], delta[None], torch.tensor([cap]))[0].to(images.dtype)
            others = len(found) - len(chosen)
            said = []
            if others:
                said.append(f"cloak on {len(chosen)} of {len(found)} faces ({self.face}); {others} other "
                            f"face{'s' if others > 1 else ''} left as they were (--others protect protects them)")
            if clipped:
                said.append(f"the run's L-inf {budget.eps * 255:.3g}/255 clipped the cloak's {self.cloak.eps * 255:.3g}/255")
            if said:
                self.notes[index] = "; ".join(said)
        return out


@hookimpl
def guardkit_register_methods(register):
    register("personal-cloak", PersonalCloak,
             summary="a person's enrolled cloak (guardkit enroll) put on new photos, no optimisation")
