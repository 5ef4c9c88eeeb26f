"""Method ``personal-cloak``: put a person's enrolled cloak (``guardkit enroll``) on new photos of them.

No optimisation and no face recognition model: each chosen face gets the cloak warped onto it through
its landmarks (``guardkit.cloak.place``), feathered, within the cloak's L-inf budget and whole-photo PSNR
floor, rounded to the saved 8-bit grid. It costs the face finder plus a few milliseconds.

Example: ``guardkit enroll me1.jpg me2.jpg me3.jpg -o me.cloak`` then ``guardkit run --cloak me.cloak new.jpg -o out/``
(``--cloak`` sets the run up from the file: this method, the cloak's own finder and its budget; a run whose
L-inf budget is below the cloak's clips it, and the photo's note says so).

A photo the cloak cannot go on (``--face 3`` on a photo of two people, a face whose frame lies outside the
photo) is left unchanged and never passed off as protected: when no photo of the batch got the cloak the batch
fails with the reason (``NoFaceError``, one line per photo, nothing written); otherwise ``unplaced`` maps that
photo's index to the reason, and the engine fails that photo alone (nothing written for it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from guardkit import hookimpl
from guardkit.cloak import Cloak, choose_faces, place, placeable
from guardkit.cloak_file import load_cloak
from guardkit.config import Budget, RunConfig
from guardkit.errors import NoFaceError
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
        self.unplaced: dict[int, str] = {}  # photo index -> why the cloak was not placed (the photo is unchanged)

    def protect(self, images: torch.Tensor, faces: Sequence[Face], budget: Budget) -> torch.Tensor:
        by_photo: dict[int, list[Face]] = defaultdict(list)
        for face in faces:
            by_photo[face.image_index].append(face)
        out = images.clone()
        self.notes, self.unplaced = {}, {}
        height, width = images.shape[-2:]
        for index in range(images.shape[0]):
            found = by_photo.get(index, [])
            chosen = choose_faces(found, self.face)
            placed = placeable(self.cloak, chosen, height, width)
            if not placed:
                self.unplaced[index] = f"cloak not placed: {self._why_not_placed(found, chosen)}"
                self.notes[index] = f"{self.unplaced[index]}; the photo is unchanged"
                continue
            image = images[index].float()
            delta = place(self.cloak, image, placed)
            clipped = budget.eps < self.cloak.eps
            delta = delta.clamp(-budget.eps, budget.eps)
            cap = math.inf
            if self.cloak.psnr_floor > 0:
                cap = l2_cap(self.cloak.psnr_floor, image.numel())
            out[index] = fit_quantized(image[None], delta[None], torch.tensor([cap]))[0].to(images.dtype)
            others = len(found) - len(chosen)
            said = []
            if len(placed) < len(chosen):
                said.append(f"cloak placed on {len(placed)} of the {len(chosen)} chosen faces; the others' frames "
                            "lie outside the photo")
            if others:
                said.append(f"cloak on {len(chosen)} of {len(found)} faces ({self.face}); {others} other "
                            f"face{'s' if others > 1 else ''} left as they were (--others protect protects them)")
            if clipped:
                said.append(f"the run's L-inf {budget.eps * 255:.3g}/255 clipped the cloak's {self.cloak.eps * 255:.3g}/255")
            if said:
                self.notes[index] = "; ".join(said)
        if self.unplaced and len(self.unplaced) == images.shape[0]:  # nothing protected: fail, write nothing
            raise NoFaceError("; ".join(dict.fromkeys(self.unplaced.values())))
        return out

    def _why_not_placed(self, found: Sequence[Face], chosen: Sequence[Face]) -> str:
        if not found:
            return "no face was found"
        if not chosen:
            return f"--face {self.face}: the photo has only {len(found)} face{'s' if len(found) > 1 else ''}"
        return "the chosen face's cloak frame lies outside the photo"


@hookimpl
def guardkit_register_methods(register):
    register("personal-cloak", PersonalCloak,
             summary="a person's enrolled cloak (guardkit enroll) put on new photos, no optimisation")
