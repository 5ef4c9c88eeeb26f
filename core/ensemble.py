"""Face recognition ensembles: several face models, each seen through its own face finder.

A protection that must hold against face recognition it has never seen attacks several models of
different families at once (Liu et al., "Delving into transferable adversarial examples", ICLR 2017).
Each model reads the faces its own finder found (its own box and landmarks), aligns them its own way
and measures in its own metric; a member's term is divided by that model's own match threshold so a
Euclidean dlib distance and a FaceNet cosine distance weigh alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from guardkit.types import Face, FaceModel


def finder_of(model: Any, default: str) -> str:
    """The face finder a face model (its class or an instance) reads: its ``default_finder``, else ``default``
    (callers pass the engine's ``DEFAULT_FACE_FINDER``, the built-in choice for a model that names none)."""
    return getattr(model, "default_finder", None) or default


@dataclass(frozen=True)
class Member:
    """One model of an ensemble. ``finder``: the face finder whose faces it reads ("" reads every face)."""

    name: str
    model: FaceModel
    finder: str = ""
    weight: float = 1.0

    def faces(self, faces: Sequence[Face]) -> list[Face]:
        """The faces of ``faces`` this member reads, in order: its finder's, and untagged ones (faces a
        caller found itself, without naming a finder)."""
        return [f for f in faces if not self.finder or not f.finder or f.finder == self.finder]


def parse_models(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"dlib,facenet"`` or ``["dlib", "facenet"]`` -> ("dlib", "facenet"); blanks dropped, order kept,
    a repeated name kept once."""
    if spec is None:
        return ()
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if name and name not in out:
            out.append(name)
    return tuple(out)
