"""How ``Engine.protect(..., cloak=...)`` / ``guardkit run --cloak`` sets a run up.

Placing the cloak alone (no ``refine``, other faces skipped) is the cloak's own method (``personal-cloak``
for the built-in kind): its face finder and nothing else, no face recognition model, no optimisation.
With ``refine`` steps, or other faces to protect, the default method optimises per photo, starting from the
cloak, against the face models the cloak was enrolled against, at the cloak's budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from guardkit.cloak import Cloak, choose_faces
from guardkit.cloak_file import load_cloak
from guardkit.errors import ConfigError

OTHERS = ("skip", "protect")


@dataclass
class CloakPlan:
    method: str
    face_model: Sequence[str] | None
    face_finder: str | None
    eps: float
    steps: int | None
    strength: str | None
    options: dict[str, Any] = field(default_factory=dict)


def plan_cloak_run(cloak: Cloak | str | Path, *, placer: str, optimiser: str, face_model: str | Sequence[str] | None,
                   refine: int = 0, face: str = "largest", others: str = "skip",
                   options: Mapping[str, Any] | None = None) -> CloakPlan:
    """The method, parts, budget and options of a run that puts ``cloak`` on photos. ``placer``: the method that
    places a cloak whose ``kind`` names none; ``optimiser``: the method that refines per photo (it takes the options ``cloak``, ``cloak_face``, ``others``, ``refine_cloaked``)."""
    cloak = cloak if isinstance(cloak, Cloak) else load_cloak(cloak)
    if refine < 0:
        raise ConfigError(f"--refine must be 0 or more steps, got {refine}")
    if others not in OTHERS:
        raise ConfigError(f"--others must be {' or '.join(OTHERS)}, got {others!r}")
    try:
        choose_faces([], face)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if refine == 0 and others == "skip":
        return CloakPlan(cloak.kind or placer, None, cloak.finder, cloak.eps, 0, None,
                         {**dict(options or {}), "cloak": cloak, "face": face})
    strength = cloak.info.get("strength") if isinstance(cloak.info.get("strength"), str) else None
    return CloakPlan(optimiser, face_model or list(cloak.face_models), None, cloak.eps, refine or None, strength,
                     {**dict(options or {}), "cloak": cloak, "cloak_face": face, "others": others,
                      "refine_cloaked": refine > 0})
