"""Run-level settings: one ``RunConfig`` flows from the CLI or the Python API into the engine."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

from guardkit.errors import ConfigError

DEFAULT_EPS = 4 / 255


def parse_fraction(text: str | float) -> float:
    """``"4/255"`` or ``"0.0157"`` -> float. Raises ``ConfigError`` on anything else."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"not a number or fraction: {text!r}") from exc


@dataclass(frozen=True)
class Budget:
    """The perturbation budget, in [0, 1] pixel units.

    ``eps`` bounds ``|x_adv - x|`` per pixel (L-inf) or the per-image L2 norm (``norm="l2"``).
    ``step_size`` is the PGD step (``None``: the method's own default relative to eps).
    """

    eps: float = DEFAULT_EPS
    steps: int = 100
    step_size: float | None = None
    norm: str = "linf"
    random_start: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps must be in (0, 1] (pixel units), got {self.eps}")
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.step_size is not None and self.step_size <= 0:
            raise ConfigError(f"step_size must be > 0, got {self.step_size}")


@dataclass(frozen=True)
class RunConfig:
    """Device, dtype, seed, batch size, weights folder and budget of one run."""

    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    batch_size: int = 1
    weights_dir: Path | None = None
    budget: Budget = field(default_factory=Budget)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")

    def with_budget(self, **changes: object) -> "RunConfig":
        return replace(self, budget=replace(self.budget, **changes))

    def torch_device(self):  # -> torch.device, imported lazily to keep the CLI start light
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} requested but CUDA is not available here")
        return dev

    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype]


def build_config(config_class: type, options: Mapping[str, Any], part: str = "this method") -> Any:
    """``config_class(**options)``, with a one-line error naming unknown options and the known ones.

    ``part`` names the part in the message (``"encoder 'sd-vae'"``)."""
    known = {f.name: f for f in fields(config_class)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{part}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return config_class(**{name: _coerce(value, str(known[name].type), name, part) for name, value in options.items()})


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _coerce(value: Any, annotation: str, name: str, part: str) -> Any:
    """A command-line value (``-O key=value``: a string, or a number) as the field's type says:
    "false"/"0" for a bool, "none" for an optional field, a number for an int or float field."""
    if isinstance(value, bool):
        return value
    if "bool" in annotation and isinstance(value, (int, str)):
        text = str(value).strip().lower()
        if text not in _TRUE + _FALSE:
            raise ConfigError(f"{part}: {name} must be true or false, got {value!r}")
        return text in _TRUE
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in ("none", "null") and "None" in annotation:
        return None
    if "int" in annotation or "float" in annotation:
        try:
            return int(text) if "int" in annotation and text.lstrip("-").isdigit() else float(text)
        except ValueError:
            if "str" not in annotation:
                raise ConfigError(f"{part}: {name} must be a number, got {value!r}") from None
    return value
