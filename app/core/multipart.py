"""Streaming multipart/form-data uploads through streaming-form-data.

:class:`FormParser` is the one way in: a :class:`~app.core.multipart_framing.FramingScanner`
sees every chunk first (bounded part headers, preamble dropped, closing boundary
noted), then the parser, whose single match-all registration (:class:`PartRouter`)
bounds field names and filenames and reports parts to a handler: here
:class:`MultipartUpload`, which sends file parts to their own
:class:`~app.core.pump.FileSink` and text fields to a bounded buffer, and in
:mod:`app.core.relay` the proxy's relay.  Nothing is committed until the closing boundary has
been seen, so a request is stored whole or not at all.

Digests for multipart uploads travel as text fields named ``sha256``: the n-th
``sha256`` field is checked against the n-th file part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget

from ..storage import Storage, StoredFile
from .digests import check_hex_sha256
from .errors import (BadRequest, FieldNameTooLong, FilenameTooLong, MalformedMultipart,
                     PayloadTooLarge, UnsupportedMediaType)
from .filenames import clean_filename
from .multipart_framing import FramingScanner, form_boundary, parser_content_type
from .pump import FileSink, Hasher, new_sha256

DIGEST_FIELD = "sha256"
MAX_FILENAME_BYTES = 1024  # in UTF-8, before clean_filename; a download header must carry it
MAX_FIELD_NAME_BYTES = 256


@dataclass
class _FilePart:
    field_name: str
    raw_filename: str
    sink: FileSink
    content_type: str = "application/octet-stream"

    @property
    def filename(self) -> str:
        return clean_filename(self.raw_filename)


@dataclass
class MultipartResult:
    files: list[StoredFile]
    fields: dict[str, list[str]] = field(default_factory=dict)


class MultipartUpload:
    def __init__(self, content_type: str, storage: Storage, *, max_file_size: int,
                 max_field_size: int, max_parts: int, max_part_headers: int,
                 threaded: bool = True, hasher: Hasher = new_sha256):
        self._form = FormParser(content_type, self, max_part_headers=max_part_headers,
                                max_parts=max_parts)
        self._storage = storage
        self._max_file_size = max_file_size
        self._max_field_size = max_field_size
        self._threaded = threaded
        self._hasher = hasher
        self.file_parts: list[_FilePart] = []
        self.fields: dict[str, list[str]] = {}
        self._current: _FilePart | _FieldPart | None = None

    # fed by the pump -------------------------------------------------------
    def receive(self, chunks: Iterable[bytes]) -> MultipartResult:
        try:
            for chunk in chunks:
                self._form.feed(chunk)
            self._form.check_closed()
            return self._commit()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        for part in self.file_parts:
            part.sink.abort()

    # parts -----------------------------------------------------------------
    def start_part(self, name: str, filename: str | None) -> None:
        if filename is None:
            self._current = _FieldPart(name, self._max_field_size)
            return
        writer = self._storage.open_writer()
        part = _FilePart(name, filename,
                         FileSink(writer, max_size=self._max_file_size,
                                  threaded=self._threaded, hasher=self._hasher))
        self.file_parts.append(part)
        self._current = part

    def part_content_type(self, content_type: str) -> None:
        if isinstance(self._current, _FilePart):
            self._current.content_type = content_type

    def part_data(self, chunk: bytes) -> None:
        if isinstance(self._current, _FilePart):
            self._current.sink.write(chunk)
        else:
            self._current.write(chunk)

    def finish_part(self) -> None:
        part, self._current = self._current, None
        if isinstance(part, _FilePart):
            part.sink.finish()  # its threads end with the part, not with the request
            if part.raw_filename == "" and part.sink.size == 0:
                # what a browser sends for a file input left empty: not a file
                part.sink.abort()
                self.file_parts.remove(part)
        else:
            self.fields.setdefault(part.name, []).append(part.text())

    # the end ---------------------------------------------------------------
    def _commit(self) -> MultipartResult:
        digests = [check_hex_sha256(value) for value in self.fields.pop(DIGEST_FIELD, [])]
        if len(digests) > len(self.file_parts):
            raise BadRequest(f"{len(digests)} sha256 fields for {len(self.file_parts)} files",
                             code="bad_digest")
        expected = digests + [None] * (len(self.file_parts) - len(digests))
        stored: list[StoredFile] = []
        try:
            for part, digest in zip(self.file_parts, expected):
                # digests are checked for every part before any is committed
                part.sink.verify(digest, part.filename)
            for part in self.file_parts:
                stored.append(part.sink.commit(filename=part.filename,
                                               content_type=part.content_type))
        except BaseException:
            for done in stored:
                self._storage.delete(done.id)
            raise
        return MultipartResult(stored, self.fields)


class _FieldPart:
    def __init__(self, name: str, limit: int):
        self.name = name
        self._limit = limit
        self._buffer = bytearray()

    def write(self, chunk: bytes) -> None:
        if len(self._buffer) + len(chunk) > self._limit:
            raise PayloadTooLarge(f"field {self.name!r} is longer than {self._limit} bytes",
                                  code="field_too_large")
        self._buffer += chunk

    def text(self) -> str:
        try:
            return self._buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"field {self.name!r} is not UTF-8 text",
                             code="bad_field") from None


class PartHandler(Protocol):
    """What a :class:`FormParser` reports parts to."""

    def start_part(self, name: str, filename: str | None) -> None: ...
    def part_content_type(self, content_type: str) -> None: ...
    def part_data(self, chunk: bytes) -> None: ...
    def finish_part(self) -> None: ...


class FormParser:
    """A multipart/form-data body, fed chunk by chunk, its parts reported to ``handler``:
    at most ``max_parts`` of them, each with at most ``max_part_headers`` bytes of headers."""

    def __init__(self, content_type: str, handler: PartHandler, *, max_part_headers: int,
                 max_parts: int):
        boundary = form_boundary(content_type)
        self._parser = StreamingFormDataParser(
            headers={"Content-Type": parser_content_type(boundary)})
        self._framing = FramingScanner(boundary.encode("ascii"), max_part_headers)
        router = PartRouter(handler, max_parts)
        self._parser.register("", router, matches=router.claim)

    def feed(self, chunk: bytes) -> None:
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)  # the parser takes only bytes (gunicorn reads bytearray)
        data = self._framing.feed(chunk)
        if not data:
            return
        try:
            self._parser.data_received(data)
        except ParseFailedException as error:
            raise MalformedMultipart(f"the multipart body is malformed ({error})") from None
        except UnicodeDecodeError:
            raise MalformedMultipart("a part's headers are not UTF-8") from None

    def check_closed(self) -> None:
        """Call once the body ended where its length said: it must hold the closing
        boundary.  (A body cut short never gets here: every chunk source raises
        TruncatedBody for it, which the client hears as such.)"""
        if not self._framing.closed:
            raise MalformedMultipart("the multipart body has no closing boundary")


class PartRouter(BaseTarget):
    """The single streaming-form-data target; checks names, forwards events to the handler."""

    def __init__(self, handler: PartHandler, max_parts: int):
        super().__init__()
        self._handler = handler
        self._max_parts = max_parts
        self._parts = 0
        self._name = ""
        self._filename: str | None = None

    def claim(self, _registered: str, name: str) -> bool:
        # the parser asks this right before it starts the part called `name`
        _check_length(name, MAX_FIELD_NAME_BYTES, "field name", FieldNameTooLong)
        self._name = name
        return True

    def set_multipart_filename(self, filename: str | None) -> None:
        if filename is not None:
            _check_length(filename, MAX_FILENAME_BYTES, "filename", FilenameTooLong)
        self._filename = filename

    def set_multipart_content_type(self, content_type: str) -> None:
        self._handler.part_content_type(content_type)

    def on_start(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise PayloadTooLarge(f"more than {self._max_parts} parts in one request",
                                  code="too_many_parts")
        self._handler.start_part(self._name, self._filename)

    def on_data_received(self, chunk: bytes) -> None:
        self._handler.part_data(chunk)

    def on_finish(self) -> None:
        self._handler.finish_part()


def _check_length(text: str, limit: int, what: str, error: type[BadRequest]) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise error(f"a part's {what} is {size} bytes long in UTF-8; at most {limit} are accepted")


def form_data_type(content_type: str | None) -> str | None:
    """``content_type`` if the body is multipart/form-data, None if it is not multipart
    at all (a raw body); any other multipart type is refused."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return content_type
    if media_type.startswith("multipart/"):
        raise UnsupportedMediaType("only multipart/form-data is accepted among multipart types")
    return None


__all__ = ["FormParser", "MultipartUpload", "MultipartResult", "form_data_type"]
