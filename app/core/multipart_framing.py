"""A multipart body's framing, checked on the bytes before streaming-form-data sees them.

streaming-form-data (a Cython push parser) leaves three things to its caller:

* Part headers are unbounded: it buffers a header line whole, re-copying it with every
  chunk, so a 64 MiB ``filename=`` costs tens of seconds and twice its size in RAM before
  any target hears of it.  :class:`FramingScanner` counts each part's header block (from
  its delimiter line to the blank line) and refuses it past a bound *before* the parser
  gets those bytes.
* A preamble (bytes before the first delimiter line, to be ignored per RFC 2046 5.1.1)
  is a parse error there; the scanner drops it.  The epilogue after the closing
  delimiter is ignored by both.
* The boundary comes from ``email.message``, which reads an unquoted ``'`` (a legal token
  character) as RFC 2231 syntax: ``boundary=a'b'c`` becomes ``c``, ``boundary=it's`` none.
  :func:`form_boundary` reads it as werkzeug's ``parse_options_header`` does instead
  (:func:`content_type_parameters`), and the parser is handed a quoted boundary (see
  :func:`parser_content_type`).

The scanner sees every body byte, so it does per chunk what C does fast (``bytes.find``)
and touches bytes in Python only near a chunk's end.
"""

from __future__ import annotations

import re

from streaming_form_data.parser import ParseFailedException, parse_content_boundary

from .errors import MalformedMultipart, PartHeadersTooLarge

# RFC 2046 5.1.1: 1 to 70 bchars, the last not a space
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

# RFC 9110 §5.6.6 parameters, as werkzeug.http.parse_options_header scans them
_KEY = re.compile(r"([\w!#$%&'*+\-.^`|~]+)=", re.ASCII)
_TOKEN = re.compile(r"[\w!#$%&'*+\-.^`|~]+", re.ASCII)
_DELIMITER = re.compile(r";[ \t]*")
_RFC2231_MARK = re.compile(r"(?:\*(\d+))?(\*)?$", re.ASCII)
_ESCAPED = re.compile(r"\\(.)")

_PREAMBLE, _HEADERS, _CONTENT, _END = range(4)
_BLANK_LINE = b"\r\n\r\n"


def form_boundary(content_type: str) -> str:
    """The boundary of a multipart/form-data Content-Type, quoted or not."""
    boundary = content_type_parameters(content_type).get("boundary")
    if boundary is None or not _BOUNDARY.fullmatch(boundary):
        raise MalformedMultipart(
            f"bad multipart Content-Type: the boundary must be 1 to 70 of the characters "
            f"RFC 2046 allows, got {boundary!r}")
    return boundary


def content_type_parameters(value: str) -> dict[str, str]:
    """The ``key=value`` parameters of a Content-Type, read as werkzeug reads them (keys
    lowercased, token or quoted-string values, invalid parts skipped, the last of a key
    wins, ``%22`` read as a quote), but without RFC 2231's ``key*=charset''value`` and
    ``key*0=`` forms, which are skipped: no client sends a boundary that way."""
    media_type, _, rest = value.partition(";")
    rest = rest.strip(" \t")
    if not media_type.strip(" \t") or not rest:
        return {}
    parameters: dict[str, str] = {}
    position = 0
    while position < len(rest):
        key = _KEY.match(rest, position)
        if key:
            position = key.end()
            if token := _TOKEN.match(rest, position):
                raw = token.group()
            elif rest.startswith('"', position):
                end = _closing_quote(rest, position + 1)
                if end < 0:
                    break  # an unterminated quoted string: nothing after it counts
                raw, position = _ESCAPED.sub(r"\1", rest[position + 1:end]), end + 1
            else:
                raw = None
            name = key.group(1).lower()
            if raw is not None and not _RFC2231_MARK.search(name).group():
                parameters[name] = raw.replace("%22", '"')
        delimiter = _DELIMITER.search(rest, position)
        if delimiter is None:
            break
        position = delimiter.end()
    return parameters


def _closing_quote(text: str, position: int) -> int:
    """Where the quoted string that opened before ``position`` closes; -1 if it does not."""
    while position < len(text):
        if text.startswith(("\\\\", '\\"'), position):
            position += 2
        elif text[position] == '"':
            return position
        else:
            position += 1
    return -1


def parser_content_type(boundary: str) -> str:
    """A Content-Type streaming-form-data reads back as exactly ``boundary``."""
    content_type = f'multipart/form-data; boundary="{boundary}"'
    try:
        understood = parse_content_boundary({"Content-Type": content_type})
    except ParseFailedException:
        understood = None
    if understood != boundary.encode():  # email decodes "=?...?=" even inside quotes
        raise MalformedMultipart(f"bad multipart Content-Type: boundary {boundary!r} is not "
                                 "supported")
    return content_type


class FramingScanner:
    """Follows delimiter lines across chunk borders: which bytes are preamble, part
    headers, part content, or after the closing delimiter.

    :meth:`feed` returns what the parser should get of each chunk (all of it but a
    preamble) and raises ``part_headers_too_large`` for a header block longer than
    ``max_headers`` bytes.  It finds a delimiter exactly where the parser does: the
    parser's ``\\r\\n--boundary\\r\\n`` and ``\\r\\n--boundary--`` both begin with
    :attr:`_dash` and are told apart by the two bytes after it.
    """

    def __init__(self, boundary: bytes, max_headers: int):
        self._dash = b"\r\n--" + boundary
        self._max_headers = max_headers
        self._state = _PREAMBLE
        # the bytes at the end of the last chunk that may begin a delimiter or blank line;
        # at the start, a CRLF as if before the body: its first line may be a delimiter
        self._carry = b"\r\n"
        self._fed = 0  # body bytes fed so far
        self._headers_start = 0  # body offset of the current header block

    @property
    def closed(self) -> bool:
        """Has the closing delimiter been seen?"""
        return self._state == _END

    def feed(self, chunk: bytes) -> bytes:
        if self._state == _END:
            return b""  # the epilogue
        carry, self._carry = self._carry, b""
        data = carry + chunk if carry else chunk
        base = self._fed - len(carry)  # body offset of data[0]
        self._fed += len(chunk)
        # carried bytes went to the parser already, unless they were preamble
        emit_from = len(carry) if self._state != _PREAMBLE else None
        emit_to = len(data)
        pos = 0
        dash = self._dash
        while True:
            if self._state == _HEADERS:
                end = data.find(_BLANK_LINE, pos)
                headers_end = base + (len(data) if end < 0 else end + 4)
                if headers_end - self._headers_start > self._max_headers:
                    raise PartHeadersTooLarge(
                        f"a part's headers are longer than {self._max_headers} bytes")
                if end < 0:
                    self._carry = data[max(pos, len(data) - 3):]
                    break
                self._state, pos = _CONTENT, end + 4
                continue
            found = data.find(dash, pos)
            if found < 0:
                self._carry = data[self._partial_dash(data, pos):]
                break
            after = found + len(dash)
            kind = data[after:after + 2]
            if len(kind) < 2:
                self._carry = data[found:]
                break
            if kind not in (b"\r\n", b"--"):
                pos = found + 1  # the boundary string inside content, not a delimiter
                continue
            if emit_from is None:
                emit_from = found + 2  # the parser starts at the first "--boundary"
            if kind == b"--":
                # the parser silently drops the last part if an epilogue of 3 bytes or
                # more follows the closing delimiter in the same data_received() call
                self._state, emit_to = _END, after + 2
                break
            self._state, pos = _HEADERS, after + 2
            self._headers_start = base + pos
        if emit_from is None:
            return b""
        if emit_from == len(carry) and emit_to == len(data):
            return chunk
        return data[emit_from:emit_to]

    def _partial_dash(self, data: bytes, pos: int) -> int:
        """Where the end of ``data`` may begin a delimiter the next chunk completes."""
        dash = self._dash
        start = data.find(b"\r", max(pos, len(data) - len(dash) - 1))
        while start >= 0:
            if dash.startswith(data[start:start + len(dash)]):
                return start
            start = data.find(b"\r", start + 1)
        return len(data)
