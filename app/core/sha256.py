"""SHA-256 whose running state can be saved with an upload and picked up again later.

hashlib objects cannot be pickled or exported, so a hash could not outlive the
request (or the process) that started it.  OpenSSL 3's libcrypto still exports
the low-level ``SHA256_Init``/``SHA256_Update``/``SHA256_Final``; their
``SHA256_CTX`` is a plain struct, so through ctypes its bytes can be copied out
after any update and copied back in another process.  ctypes releases the GIL
during the call, and the speed is hashlib's (both are the same OpenSSL code).

The saved state is written in a portable form (the eight chaining words, the
byte count and the pending partial block), not the raw struct, so another host
with another byte order or another implementation can continue it.

Without libcrypto, hashlib is used and :meth:`Sha256.state` is None: an upload
resumed later is then re-hashed from its stored bytes (one sequential read of
everything received so far, once per resuming process) -- see
:func:`resume_sha256`.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import struct
from typing import Callable, Iterable

_CTX_SIZE = 112  # unsigned int h[8], Nl, Nh, data[16], num, md_len
_CTX = struct.Struct("=8I2I64s2I")
_STATE_PREFIX = "sha256-v1:"


def _load_libcrypto():
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.SHA256_Init.argtypes = [ctypes.c_void_p]
            lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


_lib = _load_libcrypto()


def _pointer(chunk) -> object:
    """Something ctypes passes as a pointer to the chunk's bytes, without a copy."""
    if isinstance(chunk, bytes):
        return chunk
    view = memoryview(chunk)
    if view.readonly:
        return bytes(view)
    return (ctypes.c_char * view.nbytes).from_buffer(view)


class Sha256:
    """hashlib.sha256 plus :meth:`state` / ``Sha256(state)``."""

    resumable = _lib is not None

    def __init__(self, state: str | None = None):
        if not self.resumable:
            if state is not None:
                raise ValueError("no libcrypto: a saved SHA-256 state cannot be loaded")
            self._hashlib = hashlib.sha256()
            return
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if state is None:
            _lib.SHA256_Init(self._ctx)
        else:
            self._ctx.raw = _decode_state(state)

    def update(self, chunk) -> None:
        if not self.resumable:
            self._hashlib.update(chunk)
            return
        size = len(chunk) if isinstance(chunk, bytes) else memoryview(chunk).nbytes
        if size:
            _lib.SHA256_Update(self._ctx, _pointer(chunk), size)

    def state(self) -> str | None:
        """The running state as text (None without libcrypto)."""
        return _encode_state(self._ctx.raw) if self.resumable else None

    def hexdigest(self) -> str:
        if not self.resumable:
            return self._hashlib.hexdigest()
        copy = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)  # Final wipes its ctx
        out = ctypes.create_string_buffer(32)
        _lib.SHA256_Final(out, copy)
        return out.raw.hex()


def _encode_state(raw: bytes) -> str:
    *words, low_bits, high_bits, block, pending, _md_len = _CTX.unpack(raw)
    total = ((high_bits << 32) | low_bits) // 8
    portable = struct.pack(">8IQ", *words, total) + block[:pending]
    return _STATE_PREFIX + base64.b64encode(portable).decode()


def _decode_state(text: str) -> bytes:
    if not text.startswith(_STATE_PREFIX):
        raise ValueError("not a saved SHA-256 state")
    try:
        portable = base64.b64decode(text[len(_STATE_PREFIX):], validate=True)
    except ValueError:
        raise ValueError("a saved SHA-256 state is not base64") from None
    if len(portable) < 40:
        raise ValueError("a saved SHA-256 state is too short")
    *words, total = struct.unpack(">8IQ", portable[:40])
    pending = portable[40:]
    if len(pending) >= 64 or total % 64 != len(pending):
        raise ValueError("inconsistent SHA-256 state")
    bits = total * 8
    return _CTX.pack(*words, bits & 0xFFFFFFFF, bits >> 32, pending.ljust(64, b"\0"),
                     len(pending), 32)


def resume_sha256(state: str | None, stored_prefix: Callable[[], Iterable[bytes]]) -> Sha256:
    """A hash that has seen what an upload holds so far: from its saved state when that
    can be loaded, else by hashing ``stored_prefix()`` (the fallback's one extra read)."""
    if state is not None:
        try:
            return Sha256(state)
        except ValueError:
            pass
    hasher = Sha256()
    for chunk in stored_prefix():
        hasher.update(chunk)
    return hasher
