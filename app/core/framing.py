"""HTTP/1.1 message framing, sans I/O: Content-Length, Transfer-Encoding, the chunked
coding (RFC 9112 §6-7) and the request-head bounds.

Nothing here reads a socket or knows a server: :mod:`app.core.body` and
:mod:`app.web.request_body` feed it what they read and turn the :class:`FramingError`
raised here into JSON answers.
"""

from __future__ import annotations

import re

# gunicorn's defaults (limit_request_fields, limit_request_field_size), so that a request
# head gets the same answer under every server that lets the application see it
MAX_HEADER_FIELDS = 100
MAX_FIELD_LINE = 8190
# a chunk-size line with its extensions, and a whole trailer section
MAX_CHUNK_LINE = 8190
MAX_TRAILER_SECTION = 65536

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_STRING = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# RFC 9112 §7.1: chunk-size [ chunk-ext ], where
#   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
_SIZE_LINE = re.compile(
    rb"0*([0-9A-Fa-f]{1,16})"
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED_STRING
    + rb"))?)*")
# RFC 9112 §5: field-name ":" OWS field-value OWS (no CR, LF or NUL in the value)
_FIELD_LINE = re.compile(_TOKEN + rb":[^\x00\r\n]*")


class FramingError(ValueError):
    """The request's framing is broken; the message says how (for people), ``code`` what
    (for the JSON answer)."""

    code = "bad_framing"


class InvalidContentLength(FramingError):
    code = "invalid_content_length"


class UnsupportedCoding(FramingError):
    code = "unsupported_transfer_encoding"


class MalformedChunks(FramingError):
    code = "malformed_chunked_body"


def content_length(value: str | None) -> int | None:
    """The Content-Length field (None when absent): 1*DIGIT, nothing else (RFC 9110 §8.6).

    werkzeug turns "abc" or "-1" into 0 and int() takes "+5", "5_0" and non-ASCII digits;
    every one of those would frame the body differently than the client meant.
    """
    if value is None:
        return None
    digits = value.strip(" \t")
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidContentLength(f"Content-Length must be a decimal number of bytes, not {value[:40]!r}")
    return int(digits)


def transfer_coding(value: str | None, protocol: str) -> str | None:
    """``"chunked"`` or None; every other Transfer-Encoding is :class:`UnsupportedCoding`.

    RFC 9112 §6.1: chunked is the only coding that frames a body, and a server answers
    501 to a coding it does not implement (gzip, chunked would store the gzip bytes).
    """
    if value is None:
        return None
    if protocol == "HTTP/1.0":  # RFC 9112 §6.1: its framing cannot be trusted
        raise FramingError("Transfer-Encoding is not allowed in an HTTP/1.0 request")
    if value.strip(" \t").lower() != "chunked":
        raise UnsupportedCoding(f"Transfer-Encoding {value[:80]!r} is not supported; "
                                "send the bytes as they are, with Content-Length or chunked")
    return "chunked"



def announces_body(environ) -> bool:
    """Does the head say a body follows (whether or not its framing is valid)?"""
    length = environ.get("CONTENT_LENGTH", "").strip(" \t")
    return "HTTP_TRANSFER_ENCODING" in environ or length not in ("", "0")


def head_problem(environ) -> str | None:
    """Why this request head is over the bounds, or None when it is within them."""
    fields = 0
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name_length = len(key) - 5
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name_length = len(key)
        else:
            continue
        fields += 1
        if name_length + 2 + len(value) > MAX_FIELD_LINE:
            return f"the header field {key.removeprefix('HTTP_')} is over {MAX_FIELD_LINE} bytes"
    if fields > MAX_HEADER_FIELDS:
        return f"the request has {fields} header fields; at most {MAX_HEADER_FIELDS} are accepted"
    return None


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """The chunked coding, decoded as it arrives: :meth:`feed` takes the bytes read so
    far and answers where the body bytes are in them, without copying them.

    Strict (RFC 9112 §7.1): hex sizes, extensions and trailers checked and dropped, every
    line ends in CRLF, lines and the trailer section are bounded.  A chunk may be of any
    size: only the size line and the two bytes after the data are ever held.
    """

    def __init__(self) -> None:
        self._state = _SIZE
        self._line = bytearray()  # the size, end-of-data or trailer line gathered so far
        self._left = 0  # data bytes of the current chunk still to come
        self._trailer_bytes = 0
        self.body_bytes = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | bytearray, start: int = 0,
             end: int | None = None) -> list[tuple[int, int]]:
        """The ``(start, end)`` spans of body bytes in ``data[start:end]`` (the bytes that
        just arrived); bytes after the end of the chunked body are ignored.  Raises
        :class:`MalformedChunks`."""
        spans = []
        position, end = start, len(data) if end is None else end
        while position < end and self._state != _DONE:
            if self._state == _DATA:
                take = min(self._left, end - position)
                spans.append((position, position + take))
                position += take
                self._left -= take
                self.body_bytes += take
                if not self._left:
                    self._state = _DATA_END
                continue
            newline = data.find(b"\n", position)
            stop = end if newline < 0 else newline + 1
            self._line += data[position:stop]
            position = stop
            self._check_partial_line()
            if newline >= 0:
                line = bytes(self._line)
                self._line.clear()
                self._end_of_line(line)
        return spans

    def _check_partial_line(self) -> None:
        if self._state == _DATA_END:
            if not b"\r\n".startswith(self._line):
                raise MalformedChunks("a chunk's data is not followed by CRLF "
                                      "(the chunk is longer than its size line says)")
        elif self._state == _SIZE and len(self._line) > MAX_CHUNK_LINE:
            raise MalformedChunks(f"a chunk-size line is over {MAX_CHUNK_LINE} bytes")
        elif self._state == _TRAILER and self._trailer_bytes + len(self._line) > MAX_TRAILER_SECTION:
            raise MalformedChunks(f"the trailer section is over {MAX_TRAILER_SECTION} bytes")

    def _end_of_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise MalformedChunks("a line of the chunked body ends in a bare LF, not CRLF")
        line = line[:-2]
        if self._state == _DATA_END:
            self._state = _SIZE
        elif self._state == _SIZE:
            match = _SIZE_LINE.fullmatch(line)
            if match is None:
                raise MalformedChunks(f"not a chunk-size line: {line[:60]!r}")
            self._left = int(match.group(1), 16)
            self._state = _DATA if self._left else _TRAILER
        elif not line:  # the empty line after the trailer fields
            self._state = _DONE
        elif _FIELD_LINE.fullmatch(line):
            self._trailer_bytes += len(line) + 2
        else:
            raise MalformedChunks(f"not a trailer field: {line[:60]!r}")
