"""``create_app``: the FastAPI application (routes, errors as one-line JSON, the bearer token)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from guardkit.config import RunConfig, parse_fraction
from guardkit.engine import Engine
from guardkit.errors import (CapabilityError, ConfigError, GuardkitError, ImageError, NoFaceError, RegistryError,
                             WeightsError, first_line)
from guardkit.loaded import loaded_engine
from guardkit.serve.pool import Busy, TimeLimit, WorkerPool
from guardkit.serve.settings import ServeSettings
from guardkit.serve.uploads import Form, UploadError, check_photo_part, read_form, store_photo
from guardkit.serve.worker import PhotoFailed, ProtectOptions, protect_photo, verify_photo
from guardkit.verify import CROPS, DEFAULT_PURIFY

log = logging.getLogger("guardkit.serve")

STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
_BACKSTOP_S = 30.0  # beyond the time limit, for work the step check cannot interrupt (finding faces)

_PHOTO_FORM = {"type": "string", "format": "binary", "description": "The photo (JPEG, PNG, WebP, ...)."}
PROTECT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": _PHOTO_FORM,
        "strength": {"type": "string", "enum": ["low", "mid", "high"], "description": "The method's preset."},
        "eps": {"type": "string", "description": "L-inf cap in [0,1] pixel units, e.g. 4/255 (overrides strength)."},
        "steps": {"type": "integer", "description": "Optimisation steps (overrides strength)."},
        "method": {"type": "string", "description": "Protection method (default fr-cloak)."},
        "fr": {"type": "string", "description": "Face models, comma-separated (default: the service's)."},
        "format": {"type": "string", "enum": ["png", "jpeg"], "default": "png"},
        "seed": {"type": "integer", "default": 0},
        "cloak": {"type": "string", "format": "binary",
                  "description": "A personal cloak from `guardkit enroll` (.cloak): placed on the face, no optimisation."},
        "face": {"type": "string", "description": "With a cloak: largest (default), all, or N (the N-th largest)."}}}}}},
    "responses": {"200": {"description": "The protected photo (image/png), or with `Accept: application/json` "
                                         "its summary and the photo base64-encoded; the summary's `stronger` names "
                                         "the next stronger preset when a face still matches its original "
                                         "(as `guardkit run`'s note), else null.",
                          "content": {"image/png": {}, "image/jpeg": {}, "application/json": {}}}}}
VERIFY_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "reference"], "properties": {
        "file": _PHOTO_FORM, "reference": {**_PHOTO_FORM, "description": "Another photo of the same person."},
        "fr": {"type": "string", "description": "Face models, comma-separated (default: every installed one)."},
        "purify": {"type": "string", "description": f"Purifications, comma-separated (default {','.join(DEFAULT_PURIFY)})."},
        "crops": {"type": "string", "description": f"Crops each model reads the faces through, comma-separated "
                                                   f"(default {','.join(CROPS)}: its own and the ArcFace template)."}}}}}}}


def error(status: int, message: str, headers: dict[str, str] | None = None, *, root: Path | None = None) -> JSONResponse:
    """``{"error": "one line"}``; paths inside the private folder ``root`` lose it (the Engine names
    files by path, and ours are no business of the client's)."""
    line = first_line(Exception(message))
    if root is not None:
        line = re.sub(re.escape(str(root)) + r"/[^/\s]+/", "", line)
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def create_app(settings: ServeSettings = ServeSettings(), *,
               make_engine: Callable[[], Engine] = loaded_engine) -> FastAPI:
    """The service. Workers start (each building its Engine, by default one with a ``PartCache``: parts load
    once per worker) when the app starts (its lifespan)."""
    base = RunConfig(threads=settings.threads, weights_dir=settings.weights_dir)
    # requests in hand (photo being decoded, queued or running): at most what the pool takes, so queue_size bounds
    # the memory of decoding too; one more is refused before its photo is decoded
    admitted = threading.BoundedSemaphore(settings.workers + settings.queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.root = Path(tempfile.mkdtemp(prefix="guardkit-serve-"))  # mode 0700
        app.state.pool = WorkerPool(make_engine, workers=settings.workers, queue_size=settings.queue_size)
        app.state.pool.start()
        try:
            yield
        finally:
            app.state.pool.stop()
            shutil.rmtree(app.state.root, ignore_errors=True)

    app = FastAPI(title="guardkit", summary="Protect the faces in a photo from face recognition.",
                  lifespan=lifespan)
    app.state.settings = settings

    async def require_token(request: Request) -> None:
        if settings.token is None:
            return
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), settings.token.encode()):
            raise HTTPException(401, "a bearer token is required (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    _install_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Response:
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no such file: {name}")
        return _static(name)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        pool: WorkerPool = request.app.state.pool
        ok = pool.ready == pool.workers
        body = {"status": "ok" if ok else ("failed" if pool.startup_error else "starting"),
                "workers": pool.workers, "ready": pool.ready, "waiting": pool.waiting,
                "queue_size": settings.queue_size, "token_required": settings.token is not None,
                "limits": {"upload_bytes": settings.max_upload_bytes, "pixels": settings.max_pixels,
                           "seconds": settings.time_limit_s, "steps": settings.max_steps}}
        if pool.startup_error:
            body["error"] = pool.startup_error
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.post("/v1/protect", dependencies=[Depends(require_token)], openapi_extra=PROTECT_BODY)
    async def protect(request: Request) -> Response:
        """Protect the faces in the uploaded photo (multipart field `file`)."""
        form = await read_form(request, settings.max_upload_bytes)
        part = check_photo_part(form, "file")
        options = protect_options(form, settings)
        result = await _in_worker(request, {"file": part}, lambda engine, paths, folder, on_step: protect_photo(
            engine, paths["file"], folder, options, base=base, on_step=on_step))
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({**result.summary(), "image_base64": base64.b64encode(result.data).decode()})
        suffix = "png" if options.fmt == "png" else "jpg"
        return Response(result.data, media_type=result.media_type, headers={
            "Content-Disposition": f'attachment; filename="protected.{suffix}"', "Cache-Control": "no-store"})

    @app.post("/v1/verify", dependencies=[Depends(require_token)], openapi_extra=VERIFY_BODY)
    async def verify(request: Request) -> JSONResponse:
        """Distances and match / no match of a photo against a reference photo, per face model and purification."""
        form = await read_form(request, settings.max_upload_bytes)
        parts = {name: check_photo_part(form, name) for name in ("file", "reference")}
        fr = _names(form.text("fr")) or (list(settings.face_models) if settings.face_models else None)
        purify = _names(form.text("purify")) or list(DEFAULT_PURIFY)
        crops = _names(form.text("crops")) or list(CROPS)
        result = await _in_worker(request, parts, lambda engine, paths, folder, on_step: verify_photo(
            engine, paths["file"], paths["reference"], face_models=fr, purify=purify, crops=crops, base=base))
        return JSONResponse({"rows": result.rows, "warnings": result.warnings})

    async def _in_worker(request: Request, parts: dict, job: Callable) -> Any:
        """Store the parts in a fresh private folder, run ``job`` on a worker, remove the folder. Refused
        (429) at once while workers + queue_size requests are in hand, before any photo is decoded."""
        pool: WorkerPool = request.app.state.pool
        if not admitted.acquire(blocking=False):
            raise Busy(pool.retry_after())
        owned_by_job = released_by_job = False
        folder: Path | None = None
        try:
            folder = Path(tempfile.mkdtemp(dir=request.app.state.root))
            paths = {}
            for name, part in parts.items():
                paths[name] = await run_in_threadpool(store_photo, part, folder, settings.max_pixels)

            def run(engine: Engine, deadline: float) -> Any:
                def on_step(step: int, steps: int) -> None:
                    if time.monotonic() > deadline:
                        raise TimeLimit("stopped")
                try:
                    return job(engine, paths, folder, on_step)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)

            future = pool.submit(run, time_limit=settings.time_limit_s)
            owned_by_job = released_by_job = True
            future.add_done_callback(lambda _: admitted.release())  # when the job ends (or is cancelled)
            try:
                return await asyncio.wait_for(asyncio.wrap_future(future), settings.time_limit_s + _BACKSTOP_S)
            except (asyncio.TimeoutError, TimeoutError):  # queued or running past the limit: 503 (cancelled if queued)
                owned_by_job = not future.cancel()
                raise TimeLimit("stopped") from None
            except asyncio.CancelledError:  # the client went away
                owned_by_job = not future.cancel()
                raise
        finally:
            if folder is not None and not owned_by_job:
                shutil.rmtree(folder, ignore_errors=True)
            if not released_by_job:
                admitted.release()

    return app


def protect_options(form: Form, settings: ServeSettings) -> ProtectOptions:
    """The request's options, checked; unknown names are left to the Engine (which lists the known ones)."""
    fmt = (form.text("format") or "png").lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise UploadError(400, f"format must be png or jpeg, got {fmt!r}")
    strength = form.text("strength")
    eps = form.text("eps")
    steps = _integer(form.text("steps"), "steps")
    if steps is not None and not 0 <= steps <= settings.max_steps:
        raise UploadError(400, f"steps must be from 0 to {settings.max_steps}, got {steps}")
    try:
        eps_value = parse_fraction(eps) if eps else None
    except ConfigError as exc:
        raise UploadError(400, f"eps: {exc}") from None
    if eps_value is not None and not 0 < eps_value <= 1:
        raise UploadError(400, f"eps must be in (0, 1] (pixel units, e.g. 4/255), got {eps}")
    fr = _names(form.text("fr"))
    cloak = None
    if "cloak" in form.files or "cloak" in form.fields:
        from guardkit.cloak_file import CloakFileError, cloak_from_bytes

        part = form.files.get("cloak")
        if part is None or not part.data:
            raise UploadError(400, "cloak must be a non-empty file upload (a .cloak file from guardkit enroll)")
        try:
            cloak = cloak_from_bytes(bytes(part.data), "the uploaded cloak")
        except CloakFileError as exc:
            raise UploadError(422, str(exc)) from None
    face = form.text("face") or "largest"
    if not (face in ("largest", "all") or (face.isascii() and face.isdigit() and int(face) >= 1)):  # not "²"
        raise UploadError(400, f"face must be largest, all or a face number, got {face!r}")
    return ProtectOptions(method=form.text("method"), strength=strength, eps=eps_value, steps=steps,
                          face_models=tuple(fr) if fr else settings.face_models,
                          fmt="jpeg" if fmt == "jpg" else fmt, seed=_integer(form.text("seed"), "seed") or 0,
                          cloak=cloak, cloak_face=face)


def _integer(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise UploadError(400, f"{name} must be a whole number, got {text!r}") from None


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _static(name: str) -> Response:
    data = resources.files("guardkit.serve").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": "one line"}`` with a 4xx/5xx status, never a traceback."""

    @app.exception_handler(UploadError)
    async def upload(_: Request, exc: UploadError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return error(429, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TimeLimit)
    async def too_long(request: Request, _: TimeLimit) -> JSONResponse:
        limit = request.app.state.settings.time_limit_s
        return error(503, f"the request took longer than the limit of {limit:g} s", {"Retry-After": "60"})

    @app.exception_handler(GuardkitError)
    async def guardkit_error(request: Request, exc: GuardkitError) -> JSONResponse:
        if isinstance(exc, (ConfigError, RegistryError, CapabilityError)):
            status = 400
        elif isinstance(exc, (ImageError, NoFaceError, PhotoFailed)):
            status = 422
        elif isinstance(exc, WeightsError):
            status = 503
        else:
            status = 500
        return error(status, str(exc), root=getattr(request.app.state, "root", None))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, f"invalid request: {exc.errors()[0].get('msg', 'bad value') if exc.errors() else 'bad value'}")

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")
