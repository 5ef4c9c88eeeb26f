"""The ``purifiers`` plugin: registers the simple purifications, what an adversary (or a careless re-save)
does to a protected photo. Each lives in its own file: ``jpeg.py``, ``blur.py``, ``rotate.py``,
``resize.py``, ``color_jitter.py``; the FaceLock paper's settings (Tab. 3 / A6) are their defaults.

All take and return ``[B,3,H,W]`` in ``[0, 1]``; random draws come only from the ``generator`` passed
to ``purify``, so a seeded generator gives the same result. Each purifier declares its own number
shorthand (``jpeg75``, ``rotate10``, ``resize50``, ``blur15``), which ``guardkit.specs.parse_spec`` reads.
"""

from __future__ import annotations

from guardkit import hookimpl

from .blur import Blur
from .color_jitter import ColorJitter
from .jpeg import Jpeg
from .resize import Resize
from .rotate import Rotate

__all__ = ["Blur", "ColorJitter", "Jpeg", "Resize", "Rotate"]


@hookimpl
def guardkit_register_purifiers(register):
    register("jpeg", Jpeg, summary="Pillow JPEG round trip, quality=75 (straight-through gradient)")
    register("blur", Blur, summary="Gaussian blur, kernel=5 sigma=1.5")
    register("rotate", Rotate, summary="random rotation in (-degrees, degrees), degrees=10, reflection fill")
    register("resize", Resize, summary="down to scale=0.5 and back up (bilinear, antialiased)")
    register("color-jitter", ColorJitter, summary="torchvision ColorJitter: brightness/contrast/saturation=0.2, "
                                                  "hue=0")
