"""Errors that reach the user as one clear line (the CLI prints ``str(error)``, no traceback)."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class GuardkitError(Exception):
    """Base class: anything the user can fix from the message alone."""


class ConfigError(GuardkitError):
    """A bad option value."""


class RegistryError(GuardkitError):
    """Unknown part name, duplicate part name, or a plugin that failed to load."""


class UnknownPartError(RegistryError):
    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        names = ", ".join(sorted(available)) or "(none installed)"
        super().__init__(f"unknown {kind} {name!r}. Available {kind}s: {names}")
        self.kind, self.name, self.available = kind, name, available


class DuplicatePartError(RegistryError):
    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        super().__init__(f"{kind} {name!r} is registered twice: by {first} and by {second}")


class CapabilityError(GuardkitError):
    """A method was given a part that cannot do what it needs (checked before weights load)."""


class WeightsError(GuardkitError):
    """A weight file is missing or does not verify; the message says what to fetch."""


class ImageError(GuardkitError):
    """A photo that cannot be read or written; the message names the file."""


class NoFaceError(GuardkitError):
    """A photo in which no face was found."""
