"""Flux-Guard's edit region: which face regions an edit prompt names (``prompt_regions``), their union in a
face parsing (``edit_mask``), and its feathering (``blur_mask``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from guardkit.errors import ConfigError

#: Regions a parser may give; ``prompt_regions`` returns a subset of these.
REGIONS = ("skin", "eyes", "brows", "nose", "lips", "hair", "beard", "glasses", "background")
WHOLE_FACE = frozenset({"skin", "eyes", "brows", "nose", "lips", "hair"})

#: prompt words -> regions (a word matches itself and its plural / -ed / -ing forms)
KEYWORDS: dict[str, tuple[str, ...]] = {
    "hair": ("hair", "haired", "hairstyle", "haircut", "blond", "blonde", "brunette", "redhead", "ginger", "bald",
             "curly", "wavy", "ponytail", "bangs", "fringe", "braid", "braids", "dreadlocks", "afro", "mohawk",
             "bun", "perm", "hat", "cap", "beanie", "helmet", "crown", "headband", "tiara", "hood"),
    "eyes": ("eye", "eyes", "eyed", "iris", "pupil", "eyelash", "eyelashes", "eyeliner", "mascara", "eyeshadow",
             "wink", "winking", "gaze", "squint", "squinting"),
    "brows": ("brow", "brows", "eyebrow", "eyebrows", "unibrow"),
    "lips": ("lip", "lips", "lipstick", "mouth", "smile", "smiling", "smiles", "grin", "grinning", "teeth",
             "laugh", "laughing", "frown", "frowning", "pout", "open-mouthed"),
    "nose": ("nose", "nostril", "nostrils"),
    "skin": ("skin", "makeup", "make-up", "tan", "tanned", "freckle", "freckles", "freckled", "wrinkle",
             "wrinkles", "wrinkled", "pale", "blush", "blushing", "acne", "scar", "complexion", "cheek", "cheeks",
             "face-paint", "facepaint", "sunburn", "sunburnt", "tattoo"),
    "glasses": ("glasses", "sunglasses", "spectacles", "goggles", "eyeglasses", "monocle", "shades"),
    "beard": ("beard", "bearded", "mustache", "moustache", "goatee", "stubble", "sideburns", "shaven", "shaved",
              "whiskers"),
    "background": ("background", "backdrop", "beach", "snow", "snowy", "forest", "city", "street", "sky",
                   "mountain", "mountains", "sunset", "sunrise", "office", "room", "indoors", "outdoors", "park",
                   "desert", "ocean", "sea", "space", "studio", "night", "rain", "rainy", "garden", "field",
                   "scenery", "landscape", "library", "kitchen", "stage", "jungle", "underwater", "castle"),
    # whole-face edits: age, expression of the whole face, style
    "*": ("old", "older", "elderly", "aged", "young", "younger", "child", "kid", "baby", "age", "aging", "ageing",
          "zombie", "vampire", "elf", "clown", "cartoon", "anime", "painting", "sketch", "statue", "fat", "thin", "chubby", "muscular", "angry", "sad",
          "surprised", "happy"),
    # who is shown: a whole-face change only when nothing more specific is named ("a man with a beard")
    "subject": ("man", "woman", "men", "women", "boy", "girl", "male", "female", "person", "guy", "lady",
                "gentleman", "teenager"),
}
_WORD_TO_REGION = {w: region for region, words in KEYWORDS.items() for w in words}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def _region_of(word: str) -> str | None:
    if word in _WORD_TO_REGION:
        return _WORD_TO_REGION[word]
    for suffix in ("s", "es", "ed", "ing"):  # plurals and simple inflections
        if word.endswith(suffix) and word[: -len(suffix)] in _WORD_TO_REGION:
            return _WORD_TO_REGION[word[: -len(suffix)]]
    if "-" in word:  # "blue-eyed", "long-haired", "red-haired"
        for part in reversed(word.split("-")):
            region = _region_of(part)
            if region is not None:
                return region
    return None


def prompt_regions(prompt: str, source_prompt: str = "") -> set[str]:
    """The face regions an edit prompt names: keyword matching on the words of ``prompt`` that the
    ``source_prompt`` does not also contain (so "a photo of a man" -> "a photo of a man with glasses"
    names only ``glasses``). A prompt that names no known region, or names a whole-face change (age,
    style, expression of the whole face...), gives the whole face and the hair; who is shown ("a woman")
    counts only when nothing more specific is named ("a woman with red lipstick" -> ``lips``). An empty prompt is a ``ConfigError``.

    >>> sorted(prompt_regions("a man with blond hair and sunglasses", "a man"))
    ['glasses', 'hair']
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the edit prompt is empty: say what to change, e.g. --prompt \"a photo of a man with "
                          "blond hair\"")
    if len(prompt) > 2000:
        raise ConfigError(f"the edit prompt is {len(prompt)} characters long; keep it under 2000")
    source = set(_words(source_prompt or ""))
    regions: set[str] = set()
    for word in _words(prompt):
        if word in source:
            continue
        region = _region_of(word)
        if region == "*":
            regions |= WHOLE_FACE
        elif region is not None and region != "subject":
            regions.add(region)
    return regions or set(WHOLE_FACE)


def edit_mask(parsed: dict[str, torch.Tensor], regions: set[str] | Sequence[str]) -> torch.Tensor:
    """The union (per-pixel max) of the parser's masks for ``regions`` -> [1,1,H,W] in [0,1].
    A region the parser does not give is a ``ConfigError`` naming what it gives."""
    missing = sorted(set(regions) - set(parsed))
    if missing:
        raise ConfigError(f"the face parser gives no {', '.join(missing)} region (it gives {', '.join(sorted(parsed))})")
    masks = [parsed[r].float() for r in sorted(regions)]
    return torch.stack(masks).amax(0).clamp(0, 1)


def blur_mask(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a [B,1,H,W] mask, ``sigma`` in pixels (0: unchanged); edges replicated."""
    if sigma <= 0:
        return mask
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.pad(mask.float(), (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1)).clamp(0, 1)
