"""``guardkit verify``: does a protected photo still match its person? One table of distances and
match / no-match decisions under every installed face model, before and after each purification.

Faces are found again on every (purified) protected photo, as a face recognition service would, by each
model's own face finder (its ``default_finder``, see ``guardkit.ensemble.finder_of``); the reference is the largest face of the
reference photo; a probe's distance is the smallest over the faces found in it (the worst case for the
protection). Given ``attacked`` (the face models the protection was made against; a protected photo does not
record them), each row says whether its model was attacked or held out: a held-out model's row is the figure that
predicts face recognition guardkit never saw. Without it every row's role is "not stated", never assumed.

A probe matches the reference when its distance is below the model's threshold (:func:`is_match`: dlib's own rule,
distance < 0.6, and eval's ``asr``).

Each model also reads the faces through another pipeline's crop (``crops``: ``own``, the model's own
alignment, and ``template``, the ArcFace 5-point template most face recognition services use, scaled to the
model's chip): a perturbation fitted to one crop can lose much of its effect under another, even for the
same network, and a service guardkit never saw crops its own way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from guardkit.align import template_aligner
from guardkit.arrays import image_to_tensor, tensor_to_image
from guardkit.config import RunConfig
from guardkit.engine import DEFAULT_FACE_FINDER, DEFAULT_VERIFY_PURIFY
from guardkit.ensemble import finder_of
from guardkit.errors import ConfigError, GuardkitError, NoFaceError
from guardkit.imageio import load_rgb

DEFAULT_PURIFY = DEFAULT_VERIFY_PURIFY  # the purifications tried by default (the engine's table of defaults)
CROPS = ("own", "template")  # the model's own alignment; the ArcFace 5-point template at the model's chip size


def is_match(distance: float, threshold: float) -> bool:
    """Whether a face model takes two faces for one person: their distance is below its threshold."""
    return distance < threshold


@dataclass
class VerifyRow:
    face_model: str
    purify: str
    distance: float  # nan when no face was found
    threshold: float
    metric: str
    attacked: bool | None = None  # None: the caller did not say what the protection attacked
    crop: str = "own"

    @property
    def decision(self) -> str:
        if math.isnan(self.distance):
            return "no face found"
        return "match" if is_match(self.distance, self.threshold) else "no match"

    @property
    def role(self) -> str:
        return "not stated" if self.attacked is None else "attacked" if self.attacked else "held out"


def verify(engine, protected: str | Path, reference: str | Path, *, face_models: Sequence[str] | None = None,
           purify: Sequence[str] = DEFAULT_PURIFY, run: RunConfig | None = None,
           attacked: Sequence[str] | None = None, crops: Sequence[str] = CROPS,
           on_warning: Callable[[str], None] | None = None) -> list[VerifyRow]:
    """Rows of (face model, crop, purification) for ``protected`` against ``reference``. ``attacked``: the
    face models the protection was made against, each a registered face model (None: not stated, and every
    row's ``attacked`` is None); ``crops``: which of :data:`CROPS` each model reads the faces through."""
    import torch

    unknown = [c for c in crops if c not in CROPS]
    if unknown or not crops:
        raise ConfigError(f"unknown crop {', '.join(unknown) or '(none given)'}; known: {', '.join(CROPS)}")

    known = engine.registry.names("face_model")
    typos = [name for name in attacked or () if name not in known]
    if typos:
        raise ConfigError(f"--attacked: unknown face model {', '.join(typos)}; known: {', '.join(sorted(known))}")

    run = run or RunConfig()
    warn = on_warning or (lambda message: None)
    device = run.torch_device()
    reference_image = load_rgb(Path(reference))
    photo = load_rgb(Path(protected))
    probes = {}
    for spec in purify:
        part = engine.load_purifier(spec, run)
        probes[spec] = photo if part is None else tensor_to_image(
            part.purify(image_to_tensor(photo, device), torch.Generator(device=device).manual_seed(run.seed)))

    probe_tensors = {spec: image_to_tensor(image, device) for spec, image in probes.items()}
    finders: dict[str, tuple[list, dict]] = {}  # finder -> (reference faces, faces of each probe)

    def faces_of(finder_name: str) -> tuple[list, dict]:
        if finder_name not in finders:
            finder = engine.load_part("face_finder", finder_name, run)
            ref_faces = finder.find(reference_image)
            if not ref_faces:
                raise NoFaceError(f"{reference}: no face found in the reference photo by face finder {finder_name}")
            finders[finder_name] = (ref_faces, {spec: finder.find(image) for spec, image in probes.items()})
        return finders[finder_name]

    rows = []
    for name in face_models if face_models is not None else engine.registry.names("face_model"):
        spec = engine.registry.get("face_model", name)
        finder_name = finder_of(spec.factory, DEFAULT_FACE_FINDER)
        try:
            model = engine.load_part("face_model", name, run)
            reference_faces, found = faces_of(finder_name)
        except NoFaceError:
            raise
        except GuardkitError as exc:
            warn(f"face model {name} skipped: {exc}")
            continue
        reference_tensor = image_to_tensor(reference_image, device)
        with torch.no_grad():
            own_chip = model.align(reference_tensor, reference_faces[:1])
            aligners = {"own": model.align, "template": template_aligner(own_chip.shape[-1])}
            for crop in crops:
                align = aligners[crop]
                ref = model.embed(own_chip if crop == "own" else align(reference_tensor, reference_faces[:1]))
                for purification in probes:
                    faces = found[purification]
                    distance = math.nan
                    if faces:
                        emb = model.embed(align(probe_tensors[purification], faces))
                        distance = float(model.distance(emb, ref.expand_as(emb)).min())
                    rows.append(VerifyRow(name, purification, distance, model.threshold, model.metric,
                                          None if attacked is None else name in attacked, crop))
    return rows
