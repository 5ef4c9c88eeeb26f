"""guardkit: protect faces in photos from face recognition and diffusion editing.

This module stays light (no torch import) so that ``guardkit --help`` is instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("guardkit")

if TYPE_CHECKING:
    from guardkit.engine import Engine


def __getattr__(name: str) -> Any:  # lazy: `guardkit.Engine` imports torch only when asked for
    if name == "Engine":
        from guardkit.engine import Engine

        return Engine
    raise AttributeError(name)


__all__ = ["Engine", "hookimpl", "__version__"]
