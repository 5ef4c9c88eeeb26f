"""Strength presets (``--strength low|mid|high``): a documented budget, step count and options per method.

A method declares ``strengths: ClassVar[dict[str, Strength]]``; ``apply_strength`` turns a preset into
the run's budget and the method's options. What the user sets explicitly (``--eps``, ``--steps``,
``-O key=value``) wins over the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from guardkit.config import Budget
from guardkit.errors import ConfigError


@dataclass(frozen=True)
class Strength:
    """One preset: L-inf ``eps`` (the cap the engine enforces), ``steps``, method ``options``, what it is
    for (``summary``) and what it achieved on the shared photos (``measured``, with the command)."""

    eps: float
    steps: int
    options: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    measured: str = ""


def strengths_of(factory: Any) -> dict[str, Strength]:
    return dict(getattr(factory, "strengths", {}) or {})


def default_strength(factory: Any) -> str | None:
    """The preset a method uses when none is asked for: ``low`` if it has presets, else None."""
    names = strengths_of(factory)
    return "low" if "low" in names else (next(iter(names)) if names else None)


def apply_strength(factory: Any, name: str, budget: Budget | None, options: Mapping[str, Any] | None, *,
                   eps: float | None = None, steps: int | None = None) -> tuple[Budget, dict[str, Any]]:
    """The budget and options of preset ``name`` of the method ``factory``; explicit ``eps``/``steps`` and
    ``options`` win. ``budget`` gives the rest of the budget (step size, norm, random start)."""
    presets = strengths_of(factory)
    if name not in presets:
        known = ", ".join(presets) or "none"
        raise ConfigError(f"unknown strength {name!r}; this method has: {known}")
    preset = presets[name]
    budget = replace(budget or Budget(), eps=preset.eps if eps is None else eps,
                     steps=preset.steps if steps is None else steps)
    return budget, {**preset.options, **dict(options or {})}


def stronger_strength(factory: Any, eps: float) -> tuple[str, Strength] | None:
    """The method's preset with the smallest L-inf cap above ``eps`` (what to suggest when a protection at
    ``eps`` still leaves a face matched), or None when no preset is stronger."""
    above = [(preset.eps, name, preset) for name, preset in strengths_of(factory).items() if preset.eps > eps + 1e-9]
    if not above:
        return None
    _, name, preset = min(above, key=lambda t: t[0])
    return name, preset
