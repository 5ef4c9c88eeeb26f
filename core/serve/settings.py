"""``ServeSettings``: the service's limits and defaults, one frozen dataclass the CLI fills."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from guardkit.errors import ConfigError

MiB = 2**20


@dataclass(frozen=True)
class ServeSettings:
    """``workers``: threads that each hold a loaded Engine. ``queue_size``: requests that may wait for a
    worker; one more gets 429. ``max_upload_bytes``: the whole request body. ``max_pixels``: width x height
    of an uploaded photo (decompression bombs). ``time_limit_s``: per request, waiting included.
    ``max_steps``: the most optimisation steps a request may ask for. ``face_models``: what a request that
    names none protects against (None: the Engine's default). ``token``: bearer token required on
    ``/v1/*`` when set. ``threads``: torch CPU threads per process (None: torch's)."""

    workers: int = 1
    queue_size: int = 8
    max_upload_bytes: int = 20 * MiB
    max_pixels: int = 24_000_000
    time_limit_s: float = 300.0
    max_steps: int = 500
    face_models: tuple[str, ...] | None = None
    token: str | None = None
    threads: int | None = None
    weights_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.queue_size < 0:
            raise ConfigError(f"queue size must be >= 0, got {self.queue_size}")
        if self.max_upload_bytes < 1 or self.max_pixels < 1 or self.max_steps < 0:
            raise ConfigError("upload, pixel and step limits must be positive")
        if self.time_limit_s <= 0:
            raise ConfigError(f"time limit must be > 0 s, got {self.time_limit_s}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the token is empty")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """A bind beyond loopback needs a token: anyone on the network could otherwise use the machine."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"serving on {host} (not loopback) needs a token: --token or $GUARDKIT_TOKEN")
