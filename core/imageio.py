"""Reading and writing photos safely: one import for the three jobs.

* reading (:mod:`guardkit.image_read`): :func:`load_rgb` turns any reasonable photo into an ``HxWx3``
  ``uint8`` RGB array, upright, or refuses it with one :class:`~guardkit.errors.ImageError` line naming it;
* paths (:mod:`guardkit.image_paths`): :func:`collect_inputs` and :func:`plan_outputs` turn command-line
  paths into a deterministic ``input -> output`` plan that never overwrites an input;
* writing (:mod:`guardkit.image_save`): :func:`save_image` writes atomically and strips all metadata;
  :func:`is_done` lets a re-run skip photos whose output is complete (and of the expected size).

Only stdlib, numpy and Pillow are used; tensors are made elsewhere.
"""

from __future__ import annotations

from guardkit.image_paths import IMAGE_SUFFIXES, collect_inputs, output_path_for, plan_outputs
from guardkit.image_read import MAX_PIXELS, animated_frames, load_rgb, upright_size
from guardkit.image_save import is_done, save_image

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "animated_frames",
    "collect_inputs",
    "is_done",
    "load_rgb",
    "output_path_for",
    "plan_outputs",
    "save_image",
    "upright_size",
]
