"""Every hook guardkit calls. Plugins implement them with ``@guardkit.hookimpl``.

Each ``guardkit_register_<kind>s`` hook is called once per plugin with a ``register`` callback:
``register(name, factory, summary="...", weights=(KnownWeight(...), ...))``. Register classes or
factories, never loaded models: registration must be free (weights load later, in
``factory(run_config).load()``); ``weights`` says where they come from, for ``guardkit models``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from guardkit.registry import Register

hookspec = pluggy.HookspecMarker("guardkit")

#: The kinds of part, in the order ``guardkit plugins`` lists them, with their hook names.
KINDS: dict[str, str] = {
    "encoder": "guardkit_register_encoders",
    "face_model": "guardkit_register_face_models",
    "face_finder": "guardkit_register_face_finders",
    "editor": "guardkit_register_editors",
    "loss": "guardkit_register_losses",
    "method": "guardkit_register_methods",
    "purifier": "guardkit_register_purifiers",
    "metric": "guardkit_register_metrics",
    "face_parser": "guardkit_register_face_parsers",
    "edit_method": "guardkit_register_edit_methods",
}


@hookspec
def guardkit_register_encoders(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per image encoder (VAE). Called for every plugin."""


@hookspec
def guardkit_register_face_models(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per face recognition model. Called for every plugin."""


@hookspec
def guardkit_register_face_finders(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per face finder (detector + 5 landmarks)."""


@hookspec
def guardkit_register_editors(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per image editor (diffusion editing)."""


@hookspec
def guardkit_register_losses(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per loss; ``factory(run, **options)`` -> a Loss
    (a factory that takes no argument at all is called as ``factory()``)."""


@hookspec
def guardkit_register_methods(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per protection method."""


@hookspec
def guardkit_register_purifiers(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per purification (JPEG, blur, DiffPure, ...)."""


@hookspec
def guardkit_register_metrics(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per evaluation metric (PSNR, CLIP-S, FR, ...)."""


@hookspec
def guardkit_register_face_parsers(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per face parser (regions: hair, skin, eyes, ...)."""


@hookspec
def guardkit_register_edit_methods(register: "Register") -> None:
    """Call ``register(name, factory, summary=...)`` once per editing-time protection (Flux-Guard, ...)."""
