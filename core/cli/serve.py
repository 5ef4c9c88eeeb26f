"""``guardkit serve``: the HTTP service and its web page on uvicorn (the ``serve`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from guardkit.cli._options import WeightsDirOpt, err_console, one_line_errors
from guardkit.errors import ConfigError


@one_line_errors
def serve_command(
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker threads, each holding loaded models.")] = 1,
    queue_size: Annotated[int, typer.Option(help="Requests that may wait for a worker; more get 429.")] = 8,
    token: Annotated[Optional[str], typer.Option(
        envvar="GUARDKIT_TOKEN", show_envvar=True, help="Bearer token required on /v1/*.")] = None,
    fr: Annotated[Optional[str], typer.Option(
        "--fr", help="Face models a request protects against unless it names its own (default: the engine's).")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body, MB.")] = 20.0,
    max_megapixels: Annotated[float, typer.Option(help="Largest photo, megapixels.")] = 24.0,
    time_limit: Annotated[float, typer.Option(help="Seconds a request may take, waiting included.")] = 300.0,
    max_steps: Annotated[int, typer.Option(help="Most optimisation steps a request may ask for.")] = 500,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's).")] = None,
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Serve POST /v1/protect, POST /v1/verify, GET /healthz, the OpenAPI schema at /docs and a web page at /."""
    try:
        import uvicorn

        from guardkit.serve import ServeSettings, create_app
        from guardkit.serve.settings import check_bind
    except ImportError as exc:
        raise ConfigError(f"guardkit serve needs the serve extra: pip install \"guardkit[serve]\" ({exc.name} is missing)") from None
    check_bind(host, token)
    settings = ServeSettings(
        workers=workers, queue_size=queue_size, token=token, threads=threads,
        face_models=tuple(n.strip() for n in fr.split(",") if n.strip()) if fr else None,
        max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=int(max_megapixels * 1e6),
        time_limit_s=time_limit, max_steps=max_steps, weights_dir=Path(weights_dir) if weights_dir else None)
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"guardkit serving on http://{shown}:{port}/ (pid {os.getpid()}; Ctrl+C stops)", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
