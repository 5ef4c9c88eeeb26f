"""Reading an upload safely: a capped body, multipart parsed in memory, names and types checked, the
photo decoded under a pixel limit inside a private folder. Every refusal is an ``UploadError`` with an
HTTP status and one line naming the problem."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from guardkit.errors import ImageError
from guardkit.imageio import load_rgb

MAX_FIELDS = 32
MAX_FIELD_BYTES = 4096
# Declared types accepted for a photo part: images, and what browsers and curl send when they don't know.
_GENERIC_TYPES = ("application/octet-stream", "")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UploadError(Exception):
    """A bad request; ``status`` is its 4xx code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Form:
    files: dict[str, Part]
    fields: dict[str, str]

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value.strip() if value is not None and value.strip() else None


async def read_form(request: Request, max_bytes: int) -> Form:
    """The multipart body of ``request``, at most ``max_bytes``, parsed in memory (nothing on disk)."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "none"
        raise UploadError(415, f"send the photo as multipart/form-data in the field 'file' (got content type {shown})")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart body without a boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, f"upload is {int(declared):,} bytes, more than the limit of {max_bytes:,}")
    collector = _Collector()
    parser = MultipartParser(boundary, collector.callbacks())
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise UploadError(413, f"upload is more than the limit of {max_bytes:,} bytes")
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors: one line, no traceback
        raise UploadError(400, f"malformed multipart body ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return collector.form()


class _Collector:
    """python-multipart callbacks that keep parts in memory, with counts and field sizes bounded."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._header = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_part_data": self._data, "on_header_field": self._field,
                "on_header_value": self._val, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done}

    def _begin(self) -> None:
        if len(self.parts) >= MAX_FIELDS:
            raise UploadError(400, f"more than {MAX_FIELDS} form fields")
        self._headers = {}

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _val(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header.lower()] = self._value
        self._header, self._value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not _FIELD_NAME.match(name):
            raise UploadError(400, "a form field has no name or an odd one")
        filename = options.get(b"filename")
        if filename is not None:  # python-multipart drops a Windows path's folders; the raw name keeps them
            raw = re.search(rb'filename="([^"]*)"', self._headers.get(b"content-disposition", b""))
            filename = raw.group(1) if raw and len(raw.group(1)) > len(filename) else filename
        content_type = parse_options_header(self._headers.get(b"content-type", b""))[0].decode("latin-1")
        self.parts.append(Part(name, None if filename is None else filename.decode("utf-8", "replace"),
                               content_type.lower()))

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.data += data[start:end]
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            raise UploadError(400, f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def form(self) -> Form:
        files: dict[str, Part] = {}
        fields: dict[str, str] = {}
        for part in self.parts:
            if part.name in files or part.name in fields:
                raise UploadError(400, f"form field {part.name!r} given twice")
            if part.filename is None:
                try:
                    fields[part.name] = part.data.decode("utf-8")
                except UnicodeDecodeError:
                    raise UploadError(400, f"form field {part.name!r} is not UTF-8 text") from None
            else:
                files[part.name] = part
        return Form(files, fields)


def check_photo_part(form: Form, name: str) -> Part:
    """The file part ``name``: present, non-empty, a plain file name, an image (or generic) type."""
    part = form.files.get(name)
    if part is None:
        if name in form.fields:
            raise UploadError(400, f"field {name!r} must be a file upload, not text")
        raise UploadError(400, f"missing the photo: send it in the multipart field {name!r}")
    filename = part.filename or ""
    if any(c in filename for c in "/\\\x00") or filename in (".", "..") or re.match(r"^[A-Za-z]:", filename):
        raise UploadError(400, f"the file name of {name!r} must be a plain name, not a path")
    if not (part.content_type.startswith("image/") or part.content_type in _GENERIC_TYPES):
        raise UploadError(415, f"{name!r} is declared as {part.content_type}, not an image")
    if not part.data:
        raise UploadError(400, f"{name!r} is empty (0 bytes)")
    return part


def store_photo(part: Part, folder: Path, max_pixels: int) -> Path:
    """Write the part into ``folder`` under a name of ours (never the client's) and check it decodes as a
    photo of at most ``max_pixels``. Blocking: run it off the event loop."""
    path = folder / part.name
    path.write_bytes(part.data)
    try:
        load_rgb(path, max_pixels=max_pixels)
    except ImageError as exc:
        message = str(exc).replace(str(path), part.name)
        status = 413 if "pixels" in message or "too large" in message else 422
        raise UploadError(status, message) from None
    return path
