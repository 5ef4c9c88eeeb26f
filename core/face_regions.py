"""Face regions shared by face parsers: the region names every parser returns, and a face's frame
(eye axis, eye distance, nose and mouth lines) from its 5 landmarks."""

from __future__ import annotations

import math
from typing import Any, Sequence

from guardkit.errors import ConfigError
from guardkit.types import Face

#: the regions every face parser returns, as soft masks
REGIONS: tuple[str, ...] = ("face", "skin", "eyes", "brows", "nose", "lips", "hair", "beard", "glasses",
                            "head", "background")


def _mean(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


def face_frame(face: Face) -> dict[str, Any]:
    """Eye centres, nose and mouth points (pixels), and the frame: origin, unit ``u``/``v`` axes, eye distance."""
    pts = face.landmarks
    if face.scheme == "dlib5":
        eye_a, eye_b = _mean(pts[0:2]), _mean(pts[2:4])
        nose = pts[4]
    elif face.scheme == "arcface5":
        eye_a, eye_b = pts[0], pts[1]
        nose = pts[2]
    else:
        raise ConfigError(f"face regions are drawn from dlib5 or arcface5 landmarks, got {face.scheme!r}")
    ox, oy = (eye_a[0] + eye_b[0]) / 2, (eye_a[1] + eye_b[1]) / 2
    d = math.hypot(eye_b[0] - eye_a[0], eye_b[1] - eye_a[1])
    if d < 1e-3:  # degenerate landmarks: fall back on the box
        left, _, right, _ = face.box
        d = max(right - left, 1.0) * 0.4
        ux, uy = 1.0, 0.0
    else:
        ux, uy = (eye_b[0] - eye_a[0]) / d, (eye_b[1] - eye_a[1]) / d
    vx, vy = -uy, ux
    if (nose[0] - ox) * vx + (nose[1] - oy) * vy < 0:  # point v towards the nose (the chin)
        vx, vy = -vx, -vy
    if face.scheme == "arcface5":
        mouth = _mean(pts[3:5])
        mouth_v = ((mouth[0] - ox) * vx + (mouth[1] - oy) * vy) / d
        nose_v = ((nose[0] - ox) * vx + (nose[1] - oy) * vy) / d + 0.25  # nose tip -> below the nose
    else:
        nose_v = ((nose[0] - ox) * vx + (nose[1] - oy) * vy) / d
        mouth_v = nose_v + 0.45
    return {"origin": (ox, oy), "u": (ux, uy), "v": (vx, vy), "d": d, "nose_v": nose_v, "mouth_v": mouth_v}
