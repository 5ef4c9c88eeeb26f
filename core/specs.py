"""Short part specs on the command line: ``name``, ``name:key=value,key=value``, or a part's own number
shorthand. A part declares its shorthand as a class attribute, ``shorthand = Shorthand("quality")``, read
into its capabilities at registration: with it, ``jpeg75`` reads as ("jpeg", {"quality": 75}) and, for
``Shorthand("scale", 100)``, ``resize50`` as ("resize", {"scale": 0.5}). Core names no part here."""

from __future__ import annotations

import math
import re
from typing import Any, Collection, Mapping, NamedTuple

from guardkit.errors import ConfigError


class Shorthand(NamedTuple):
    """``name<digits>`` means option ``option`` = digits / ``divisor`` (an int when ``divisor`` is 1)."""

    option: str
    divisor: float = 1

    def value(self, digits: str) -> int | float:
        number = int(digits)
        return number if self.divisor == 1 else number / self.divisor


def number(text: str) -> int | float | str:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else unchanged."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_NAME_NUMBER = re.compile(r"([a-z][a-z_-]*?)(\d+)")
_KEY = re.compile(r"[a-z_][a-z0-9_]*")


def option_value(text: str) -> Any:
    """An option value from the CLI: int, float, true/false, none, or the text itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    value = number(text)
    return value if not isinstance(value, float) or math.isfinite(value) else text


def parse_spec(spec: str, names: Collection[str] = (), *,
               shorthands: Mapping[str, Shorthand] | None = None) -> tuple[str, dict[str, Any]]:
    """One spec -> (part name, options). ``names``: the parts that exist, so that ``color-jitter5`` (a
    known name with a number it has no shorthand for) is refused instead of read as a name.
    ``shorthands``: name -> ``Shorthand`` of the parts that declare one (``Registry.shorthands(kind)``).

    ``"none"`` -> ("none", {}); ``"jpeg75"`` -> ("jpeg", {"quality": 75}) where jpeg declares
    ``Shorthand("quality")``; ``"jpeg:quality=60,..."``: the general form, values read by ``option_value``.
    Names, keys and repeated keys are checked; anything else is a one-line ``ConfigError``."""
    if not isinstance(spec, str):
        raise ConfigError(f"part spec must be a string, got {spec!r}")
    shorthands = shorthands or {}
    hint = "expected none, NAME or NAME:key=value"
    if shorthands:
        hint += " or " + ", ".join(f"{part}<{sh.option}>" for part, sh in sorted(shorthands.items()))
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not sep:
        match = _NAME_NUMBER.fullmatch(name)
        if match and match.group(1) in shorthands:
            shorthand = shorthands[match.group(1)]
            return match.group(1), {shorthand.option: shorthand.value(match.group(2))}
        if match and match.group(1) in names:
            raise ConfigError(f"bad spec {spec!r}: {match.group(1)} has no number shorthand; "
                              f"use {match.group(1)}:key=value")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"bad spec {spec!r}: {hint}")
        return name, {}
    if not _NAME.fullmatch(name) or name == "none":
        raise ConfigError(f"bad spec {spec!r}: {hint}")
    options: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not _KEY.fullmatch(key) or not value:
            raise ConfigError(f"bad spec {spec!r}: options must read key=value, got {item.strip()!r}")
        if key in options:
            raise ConfigError(f"bad spec {spec!r}: option {key!r} given twice")
        options[key] = option_value(value)
    return name, options
