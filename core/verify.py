"""``guardkit verify``: does a protected photo still match its person? One table of distances and
match / no-match decisions under every installed face model, before and after each purification.

Faces are found again on every (purified) protected photo, as a face recognition service would; the
reference is the largest face of the reference photo; a probe's distance is the smallest over the
faces found in it (the worst case for the protection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from guardkit.config import RunConfig
from guardkit.errors import GuardkitError, NoFaceError
from guardkit.imageio import load_rgb
from guardkit.arrays import image_to_tensor, tensor_to_image

DEFAULT_PURIFY = ("none", "jpeg90", "jpeg75", "jpeg60", "blur", "rotate", "resize")


@dataclass
class VerifyRow:
    face_model: str
    purify: str
    distance: float  # nan when no face was found
    threshold: float
    metric: str

    @property
    def decision(self) -> str:
        if math.isnan(self.distance):
            return "no face found"
        return "match" if self.distance <= self.threshold else "no match"


def verify(engine, protected: str | Path, reference: str | Path, *, face_models: Sequence[str] | None = None,
           purify: Sequence[str] = DEFAULT_PURIFY, run: RunConfig | None = None,
           on_warning: Callable[[str], None] | None = None) -> list[VerifyRow]:
    import torch

    run = run or RunConfig()
    warn = on_warning or (lambda message: None)
    device = run.torch_device()
    finder = engine.load_part("face_finder", "dlib", run)
    reference_image = load_rgb(Path(reference))
    reference_faces = finder.find(reference_image)
    if not reference_faces:
        raise NoFaceError(f"{reference}: no face found in the reference photo")
    photo = load_rgb(Path(protected))

    probes = {}
    for spec in purify:
        part = engine.load_purifier(spec, run)
        probes[spec] = photo if part is None else tensor_to_image(
            part.purify(image_to_tensor(photo, device), torch.Generator(device=device).manual_seed(run.seed)))
    found = {spec: finder.find(image) for spec, image in probes.items()}

    rows = []
    for name in face_models if face_models is not None else engine.registry.names("face_model"):
        try:
            model = engine.load_part("face_model", name, run)
        except GuardkitError as exc:
            warn(f"face model {name} skipped: {exc}")
            continue
        with torch.no_grad():
            ref = model.embed(model.align(image_to_tensor(reference_image, device), reference_faces[:1]))
            for spec, image in probes.items():
                faces = found[spec]
                if not faces:
                    rows.append(VerifyRow(name, spec, math.nan, model.threshold, model.metric))
                    continue
                emb = model.embed(model.align(image_to_tensor(image, device), faces))
                distance = float(model.distance(emb, ref.expand_as(emb)).min())
                rows.append(VerifyRow(name, spec, distance, model.threshold, model.metric))
    return rows
