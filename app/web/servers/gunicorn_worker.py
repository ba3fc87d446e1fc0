"""gunicorn's gthread worker with a whole-head deadline (``worker_class`` in gunicorn.conf.py).

gthread hands each connection with bytes waiting to a pool thread, which then reads the
request head with blocking ``recv()`` and no timeout at all: a client that sends half a
head and nothing more holds that thread forever, and a few dozen of them hold them all.
Here the thread first gathers the head itself, each ``recv()`` bounded by what is left of
``SPILLWAY_HEAD_TIMEOUT``, and gives the bytes back to gunicorn's parser, which then parses
a head that is complete.  An incomplete head at the deadline is answered ``408
request_head_timeout`` and the connection closed.

The deadline runs from the moment gunicorn queues the connection for a thread, not from
when a thread gets to it: when slow heads outnumber the threads, the ones still queued
have run out of time by their turn and are answered at once (if their head is still
incomplete), so N slow clients cost the threads about one deadline, not N / threads.
A complete head that waited in the queue is served whatever its age.
"""

from __future__ import annotations

import json
import socket
import time

from gunicorn.workers import gthread

from ...core.errors import RequestHeadTimeout, error_body
from ...settings import Settings

# gthread 27 internals this worker relies on; fail at start rather than misbehave
_DEFER = gthread._DEFER
_FIRST_BYTE_WAIT = gthread.DEFAULT_WORKER_DATA_TIMEOUT

_HEAD_END = b"\r\n\r\n"
_BARE_HEAD_END = b"\n\n"  # malformed (gunicorn refuses bare LF): let its parser say so now


class HeadDeadlineWorker(gthread.ThreadWorker):

    def init_process(self):
        self.head_timeout = Settings.from_env().head_timeout
        # past this much the parser refuses the head (431-ish 400) without our help
        self.head_limit = (self.cfg.limit_request_line + 4 + self.cfg.limit_request_fields
                           * (self.cfg.limit_request_field_size + 2))
        super().init_process()

    def enqueue_req(self, conn):
        # new connection, kept-alive one turned readable, or read-ahead of the next request
        conn.spillway_head_deadline = time.monotonic() + self.head_timeout
        super().enqueue_req(conn)

    def handle(self, conn):
        if not conn.initialized and not conn.data_ready:
            # as gthread: a connection that sends nothing waits in the poller, not a thread
            if not conn.wait_for_data(_FIRST_BYTE_WAIT):
                return _DEFER
        conn.sock.setblocking(True)
        conn.init()
        if not conn.is_http2 and not self._gather_head(conn):
            self._answer_head_timeout(conn)
            return False
        return super().handle(conn)

    def _gather_head(self, conn) -> bool:
        """Read until the head is complete (True) or the deadline passed (False).

        Whatever was read goes back to the parser's buffer either way; an end of stream or
        an oversize head is the parser's to report.
        """
        unreader = conn.parser.unreader
        head = bytearray(unreader.take_buffered())  # read-ahead from the previous request
        scanned = 0
        sock = conn.sock
        try:
            while (head.find(_HEAD_END, scanned) < 0 and head.find(_BARE_HEAD_END, scanned) < 0
                   and len(head) <= self.head_limit):
                scanned = max(0, len(head) - 3)
                # past the deadline still take what has arrived, without waiting
                sock.settimeout(max(0.0, conn.spillway_head_deadline - time.monotonic()))
                try:
                    received = sock.recv(65536)
                except (TimeoutError, BlockingIOError):
                    return False
                except OSError:  # reset: the parser meets it again and handles it as usual
                    break
                if not received:
                    break
                head += received
            return True
        finally:
            sock.settimeout(None)
            unreader.unread(bytes(head))

    def _answer_head_timeout(self, conn) -> None:
        error = RequestHeadTimeout(
            f"the request head was not complete within {self.head_timeout:g} s")
        body = json.dumps(error_body(error)).encode()
        answer = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.log.info("request head from %s incomplete after %g s: 408", conn.client,
                      self.head_timeout)
        sock = conn.sock
        try:
            sock.settimeout(1.0)
            sock.sendall(answer)
            # linger here, in this pool thread, while bytes still come (they would reset the
            # answer away), until the client is quiet for 0.1 s: a silent one costs this
            # thread 0.1 s.  Then shut the read side, so that gthread's own lingering close,
            # which runs on the main loop that accepts every connection, ends at once.
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.1)
            lingered_until = time.monotonic() + 1.0
            while time.monotonic() < lingered_until and sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
