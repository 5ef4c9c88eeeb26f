"""Face parser ``landmarks``: approximate face regions drawn from each face's 5 landmarks and box.

No weights and no network: every region is a soft ellipse (or band) placed in a face frame built from
the landmarks. Origin at the midpoint of the eye centres, ``u`` along the eye line, ``v`` across it
towards the mouth, both in units of the distance between the eye centres ``d``. Measured on dlib's
5-point model, the "below the nose" point sits at about ``v = 0.95`` and the mouth at about ``1.4``;
arcface5 gives the nose tip and the mouth corners directly.

It is *approximate*: a face-shaped stencil, not a segmentation. Hair is a band around and above the
face ellipse, whatever the real hair does; glasses are the eye band, whether or not the person wears
any; beard is the lower face. That is enough for what it is for, an edit-region mask that is blurred and
pooled to a 32x32 token grid (16 pixels per token at 512 px), where an error of a few pixels is below a
token. For pixel-accurate regions use a parsing network (``bisenet``, when its weights are given).

Regions (each ``[1,1,H,W]`` in [0,1], the union over all faces): ``face`` (the whole face ellipse),
``skin`` (face minus eyes, brows, nose, lips), ``eyes``, ``brows``, ``nose``, ``lips``, ``hair``,
``beard``, ``glasses``, ``head`` (face + hair), ``background`` (1 - head).

Example::

    regions = LandmarkParser(RunConfig()).parse(photo, faces)     # photo [1,3,H,W]
    mask = torch.maximum(regions["hair"], regions["brows"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from guardkit import hookimpl
from guardkit.config import RunConfig, build_config
from guardkit.errors import ConfigError
from guardkit.face_regions import REGIONS, face_frame
from guardkit.types import Face

@dataclass(frozen=True)
class LandmarkParserConfig:
    """``softness``: width of each region's soft edge, as a fraction of the region's radius (0: hard masks).
    ``face_width``, ``face_height``: half-axes of the face ellipse in eye distances; ``hair_margin``: how far
    (in eye distances) the hair band reaches beyond the face ellipse at the top and sides."""

    softness: float = 0.12
    face_width: float = 1.05
    face_height: float = 1.5
    hair_margin: float = 0.55

    def __post_init__(self) -> None:
        if self.softness < 0 or self.face_width <= 0 or self.face_height <= 0 or self.hair_margin < 0:
            raise ConfigError("face parser 'landmarks': softness, hair_margin must be >= 0 and face sizes > 0")


class LandmarkParser:
    """Approximate face regions from 5 landmarks (see the module docstring); no weights."""

    name: ClassVar[str] = "landmarks"
    differentiable: ClassVar[bool] = False
    schemes: ClassVar[tuple[str, ...]] = ("dlib5", "arcface5")
    regions: ClassVar[tuple[str, ...]] = REGIONS

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        self.config = build_config(LandmarkParserConfig, options)

    def load(self) -> None:
        return None

    def _ellipse(self, u: torch.Tensor, v: torch.Tensor, cu: float, cv: float, au: float, av: float) -> torch.Tensor:
        r = torch.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)
        soft = self.config.softness
        if soft == 0:
            return (r <= 1).float()
        return torch.sigmoid((1 - r) / (soft / 2))

    def _face_regions(self, face: Face, height: int, width: int) -> dict[str, torch.Tensor]:
        f = face_frame(face)
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                                torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
        dx, dy = xs - f["origin"][0], ys - f["origin"][1]
        u = (dx * f["u"][0] + dy * f["u"][1]) / f["d"]
        v = (dx * f["v"][0] + dy * f["v"][1]) / f["d"]
        c = self.config
        nose_v, mouth_v = f["nose_v"], f["mouth_v"]
        chin_v = mouth_v + 0.65
        top_v = -0.95
        face_cv, face_av = (chin_v + top_v) / 2, max((chin_v - top_v) / 2, c.face_height)
        face_mask = self._ellipse(u, v, 0.0, face_cv, c.face_width, face_av)
        eyes = torch.maximum(self._ellipse(u, v, -0.5, 0.0, 0.26, 0.14), self._ellipse(u, v, 0.5, 0.0, 0.26, 0.14))
        brows = torch.maximum(self._ellipse(u, v, -0.5, -0.3, 0.32, 0.1), self._ellipse(u, v, 0.5, -0.3, 0.32, 0.1))
        nose = self._ellipse(u, v, 0.0, nose_v * 0.55, 0.2, nose_v * 0.55)
        lips = self._ellipse(u, v, 0.0, mouth_v, 0.42, 0.17)
        features = torch.stack([eyes, brows, nose, lips]).amax(0)
        skin = (face_mask - features).clamp(0, 1)
        head = self._ellipse(u, v, 0.0, face_cv - c.hair_margin / 2,
                             c.face_width + c.hair_margin, face_av + c.hair_margin / 2)
        above_jaw = torch.sigmoid((nose_v + 0.3 - v) / 0.1)  # hair stops about the mouth's level at the sides
        hair = ((head - face_mask).clamp(0, 1) * above_jaw)
        beard = face_mask * torch.sigmoid((v - (nose_v + 0.05)) / 0.06) * (1 - eyes)
        glasses = self._ellipse(u, v, 0.0, -0.02, 0.98, 0.3)
        head = torch.maximum(head * torch.maximum(above_jaw, face_mask), face_mask)
        return {"face": face_mask, "skin": skin, "eyes": eyes, "brows": brows, "nose": nose, "lips": lips,
                "hair": hair, "beard": beard, "glasses": glasses, "head": head}

    def parse(self, image: torch.Tensor, faces: Sequence[Face]) -> dict[str, torch.Tensor]:
        """image [1,3,H,W] (only its size is read) -> {region: soft mask [1,1,H,W] in [0,1]} on image's device.

        Faces are combined by the per-pixel maximum; without faces every face region is empty and
        ``background`` is all ones."""
        if image.ndim != 4 or image.shape[0] != 1:
            raise ConfigError(f"face parser 'landmarks' expects one image [1,3,H,W], got {tuple(image.shape)}")
        height, width = int(image.shape[-2]), int(image.shape[-1])
        out = {name: torch.zeros(height, width) for name in REGIONS if name != "background"}
        for face in faces:
            for name, mask in self._face_regions(face, height, width).items():
                out[name] = torch.maximum(out[name], mask)
        out["background"] = 1 - out["head"]
        return {name: m.clamp(0, 1)[None, None].to(image.device) for name, m in out.items()}


@hookimpl
def guardkit_register_face_parsers(register: Any) -> None:
    register("landmarks", LandmarkParser,
             summary="approximate regions (hair, skin, eyes, lips, ...) drawn from 5 landmarks; no weights")
