"""Short part specs on the command line: ``jpeg75`` -> ("jpeg", {"quality": 75}),
``resize50`` -> ("resize", {"scale": 0.5}), ``rotate10`` -> ("rotate", {"degrees": 10}),
``blur`` -> ("blur", {}), or the general ``name:key=value,key=value``."""

from __future__ import annotations

import re
from typing import Any

from guardkit.errors import ConfigError

#: trailing-number shorthands: name -> (option, divisor)
SHORTHANDS: dict[str, tuple[str, float]] = {
    "jpeg": ("quality", 1), "resize": ("scale", 100), "rotate": ("degrees", 1), "blur": ("sigma", 10),
    "diffpure": ("t", 100),
}


def number(text: str) -> int | float | str:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else unchanged."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """One spec -> (part name, options). A malformed spec is a one-line ``ConfigError``."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty part spec")
    if ":" in spec:
        name, _, rest = spec.partition(":")
        options = {}
        for pair in rest.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"bad option {pair!r} in {spec!r}: expected key=value")
            options[key.strip()] = number(value.strip())
        return name.strip(), options
    match = re.fullmatch(r"([a-z][a-z-]*?)(\d+)", spec)
    if match and match.group(1) in SHORTHANDS:
        key, divisor = SHORTHANDS[match.group(1)]
        value = int(match.group(2))
        return match.group(1), {key: value if divisor == 1 else value / divisor}
    return spec, {}
