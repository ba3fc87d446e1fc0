"""Reading a request body through a given ``read(n)``: limits, truncation, stalls, rate.

:class:`RequestBody` yields the body in ``chunk_size`` steps, enforcing the size limit on
the way and turning every way a body can end early into :class:`TruncatedBody`, or
:class:`RequestTimeout` when the client stalled for ``SPILLWAY_READ_TIMEOUT`` seconds, or
:class:`RequestTooSlow` when it keeps sending, but less than ``SPILLWAY_MIN_BODY_RATE``
bytes/s over a ``SPILLWAY_MIN_BODY_RATE_WINDOW`` (the first window is the grace period).
The rate is checked between chunks, so the readers give back what they have once a
window's time has passed, rather than wait until a whole chunk has trickled in.

:func:`body_framing` and :func:`refuse_by_headers` decide from the headers alone, before a
single body byte is read; :func:`chunked_reader` decodes a chunked body from its raw bytes
(:mod:`app.core.framing`).  Which ``read`` a request gets, per server, is
:mod:`app.web.request_body`'s business.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

from . import framing
from .errors import (BadRequest, LengthRequired, MalformedChunkedBody, NotImplementedHere,
                     PayloadTooLarge, RequestTimeout, RequestTooSlow, SpillwayError,
                     TruncatedBody, UnsupportedMediaType)

# (error, seconds the failed read waited) -> did the client stall rather than leave?
StallTest = Callable[[Exception, float], bool]


def timed_out(error: Exception, _waited: float) -> bool:
    return isinstance(error, TimeoutError)  # gunicorn: socket.timeout from the read timeout


class RequestBody:
    def __init__(self, read: Callable[[int], bytes], *, declared_length: int | None,
                 limit: int, chunk_size: int, stalled: StallTest = timed_out,
                 min_rate: int = 0, rate_window: float = 30.0):
        self._read = read
        self._stalled = stalled
        self.min_rate = min_rate
        self.rate_window = rate_window
        self.declared_length = declared_length
        self.limit = limit
        self.chunk_size = chunk_size
        self.received = 0
        self.complete = declared_length == 0

    def chunks(self) -> Iterator[bytes]:
        """Yield the body; raise PayloadTooLarge, TruncatedBody or RequestTimeout instead
        of ending early, or RequestTooSlow when it arrives too slowly."""
        window_start, window_received = time.monotonic(), 0
        while True:
            started = time.monotonic()
            try:
                chunk = self._read(self.chunk_size)
            except SpillwayError:
                raise
            except Exception as error:  # every server reports a dropped client its own way
                if self._stalled(error, time.monotonic() - started):
                    raise RequestTimeout(
                        f"no body bytes arrived within the read timeout; got {self.received} "
                        "bytes before the client stalled"
                    ) from error
                raise TruncatedBody(
                    f"the body ended after {self.received} bytes: {type(error).__name__}"
                ) from error
            if not chunk:
                break
            self.received += len(chunk)
            if self.received > self.limit:
                raise PayloadTooLarge(
                    f"the body is larger than the limit of {self.limit} bytes",
                    code="request_too_large",
                )
            if self.min_rate and (now := time.monotonic()) - window_start >= self.rate_window:
                self._check_rate(now - window_start, self.received - window_received)
                window_start, window_received = now, self.received
            yield chunk
        if self.declared_length is not None and self.received != self.declared_length:
            raise TruncatedBody(
                f"got {self.received} of {self.declared_length} bytes announced by Content-Length"
            )
        self.complete = True

    def _check_rate(self, seconds: float, received: int) -> None:
        if received < self.min_rate * seconds:
            raise RequestTooSlow(
                f"{received} bytes arrived in the last {seconds:.1f} s, below the minimum of "
                f"{self.min_rate} bytes/s; got {self.received} bytes in all"
            )


def body_framing(transfer_encoding: str | None, protocol: str,
                 content_length: str | None) -> tuple[bool, int | None]:
    """(chunked, declared length) from the framing headers; BadRequest for a framing that
    cannot be trusted, NotImplementedHere (501, RFC 9112 §6.1) for a coding other than
    chunked."""
    try:
        chunked = framing.transfer_coding(transfer_encoding, protocol)
        declared = framing.content_length(content_length)
    except framing.UnsupportedCoding as error:
        raise NotImplementedHere(str(error), code=error.code) from error
    except framing.FramingError as error:
        raise BadRequest(str(error), code=error.code) from error
    return bool(chunked), declared


def refuse_by_headers(*, chunked: bool, declared: int | None, content_encoding: str | None,
                      limit: int) -> None:
    """Raise what a body's headers alone decide: no length, too large, a content coding.
    Also asked by nginx (app/web/routes/auth_check.py) before it reads a body."""
    if not chunked and declared is None:
        raise LengthRequired()
    if declared is not None and declared > limit:
        raise PayloadTooLarge(
            f"Content-Length {declared} is larger than the limit of {limit} bytes",
            code="request_too_large",
        )
    coding = (content_encoding or "identity").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {coding!r} is not supported; send the bytes as they are",
            code="unsupported_content_encoding",
        )


def chunked_reader(read_into: Callable[[bytearray, int], int],
                    patience: float | None) -> Callable[[int], bytearray]:
    """``read(size)`` of a chunked body from its raw bytes: ``size`` body bytes a call (fewer
    only at the end, or once ``patience`` seconds passed: a client trickling tiny chunks),
    b"" after the last chunk, in memory bounded by ``size`` whatever the chunk sizes.

    Filling each buffer whole costs nothing in waiting: until the last chunk and the
    trailer section have arrived, the client still owes bytes.  It spares the pump a
    step per socket read (uWSGI's router relays bodies in 32 KiB pieces).
    """
    decoder = framing.ChunkedDecoder()
    failure: BaseException | None = None  # after body bytes that arrived before it: raised next

    def read(size: int) -> bytearray:
        nonlocal failure
        if failure is not None:
            raise failure
        buffer = bytearray(size)
        filled = 0  # body bytes gathered at the front of the buffer
        hand_back_at = math.inf if patience is None else time.monotonic() + patience
        while filled < size and not decoder.done:
            if filled and time.monotonic() >= hand_back_at:
                break  # hand back what there is: never an empty read before the end
            try:
                got = read_into(buffer, filled)  # the raw bytes land right after them
                if not got:
                    raise TruncatedBody(f"the chunked body ended after {decoder.body_bytes} "
                                        "bytes, before its last chunk")
            except BaseException as error:
                if not filled:
                    raise
                failure = error  # hand back what arrived first (a resumable upload keeps it)
                break
            try:
                spans = decoder.feed(buffer, filled, filled + got)
            except framing.MalformedChunks as error:
                raise MalformedChunkedBody(str(error)) from error
            filled = _move_to(buffer, filled, spans)
        del buffer[filled:]
        return buffer

    return read


def _move_to(buffer: bytearray, filled: int, spans: list[tuple[int, int]]) -> int:
    """Move the body bytes at ``spans`` to ``buffer[filled:]``; the new count at the front.

    Usually there is nothing to move: one span, right where the raw bytes landed.
    """
    with memoryview(buffer) as view:
        for start, end in spans:
            if start != filled:
                view[filled:filled + end - start] = view[start:end]  # memmove: may overlap
            filled += end - start
    return filled
