"""Hooks: tell an HTTP endpoint (or a Python callable) what happened to uploads.

``pre-create`` runs before any body byte is read and may refuse the upload; the post-*
hooks (post-create, post-receive, post-finish, post-terminate) are delivered from a
thread of their own, after the fact, so a slow receiver never slows an upload.

Webhook requests are ``POST <SPILLWAY_HOOK_URL>`` with a JSON body and

* ``X-Spillway-Event``: the hook's name;
* ``Idempotency-Key``: the event's id, the same on every retry of that event;
* ``X-Spillway-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.

post-* deliveries that fail are retried ``hook_retries`` times, waiting ``hook_backoff``
seconds, doubling.  post-finish and post-terminate are written to a spool directory
first and removed once delivered, so one whose worker died, or whose retries ran out, is
delivered again by the sweep (:mod:`app.core.sweep`); the receiver de-duplicates by the
idempotency key.  post-receive is progress: one attempt, no spool.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

from .errors import HookFailed, UploadRefused
from .events import Admission, RequestInfo, UploadEvent
from .processes import process_alive

log = logging.getLogger("spillway.hooks")

HookCallable = Callable[[str, dict], None]  # (hook name, payload); pre-create may raise
_SPOOLED = {"post-finish", "post-terminate"}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class Webhook:
    """One HTTP endpoint; ``send`` raises on anything but a 2xx answer."""

    def __init__(self, url: str, secret: str, timeout: float):
        import requests

        self.url, self._secret, self._timeout = url, secret, timeout
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or .netrc from the environment

    def __call__(self, name: str, payload: dict) -> None:
        import requests

        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "spillway",
                   "X-Spillway-Event": name, "Idempotency-Key": payload["id"],
                   "X-Spillway-Signature": sign(self._secret, int(time.time()), body)}
        try:
            answer = self._session.post(self.url, data=body, headers=headers,
                                        timeout=self._timeout)
        except requests.RequestException as error:
            raise HookFailed(f"the {name} hook at {self.url} did not answer: "
                             f"{type(error).__name__}") from error
        if 400 <= answer.status_code < 500 and name == "pre-create":
            raise UploadRefused(_message(answer) or None, status=answer.status_code)
        if not 200 <= answer.status_code < 300:
            raise HookFailed(f"the {name} hook at {self.url} answered {answer.status_code}")

    def __repr__(self) -> str:
        return f"Webhook({self.url!r})"


def _message(answer) -> str:
    try:
        data = answer.json()
    except ValueError:
        return answer.text.strip()[:500]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error", {}).get("message", ""))[:500]
    return ""


class Hooks:
    """The targets (a webhook, callables) and the delivery of events to them."""

    def __init__(self, targets: list[HookCallable], *, events: tuple[str, ...], retries: int,
                 backoff: float, spool_dir: str | None, on_delivery=None):
        self.targets = targets
        self.events = frozenset(events)
        self.retries, self.backoff = retries, backoff
        self.spool_dir = spool_dir
        if spool_dir:
            os.makedirs(spool_dir, exist_ok=True)
        self._on_delivery = on_delivery or (lambda name, ok: None)
        self._queue: queue.Queue = queue.Queue()
        self._thread_pid: int | None = None
        self._thread_lock = threading.Lock()

    # pre-create ------------------------------------------------------------------
    def admit(self, admission: Admission, info: RequestInfo | None) -> None:
        if "pre-create" not in self.events:
            return
        payload = _payload("pre-create", info, upload={
            "id": None, "kind": admission.kind, "filename": admission.filename,
            "length": admission.length, "content_type": admission.content_type,
            "metadata": admission.metadata})
        for target in self.targets:
            try:
                target("pre-create", payload)
            except UploadRefused:
                self._on_delivery("pre-create", True)  # answered: a refusal is an answer
                raise
            except HookFailed:
                self._on_delivery("pre-create", False)
                raise
            except Exception as error:
                self._on_delivery("pre-create", False)
                raise HookFailed(f"the pre-create hook failed: {type(error).__name__}") \
                    from error
            self._on_delivery("pre-create", True)

    # post-* ------------------------------------------------------------------------
    def upload_event(self, event: UploadEvent) -> None:
        if event.name not in self.events or not event.name.startswith("post-"):
            return
        info = RequestInfo(event.request_id or "", event.token_name)
        payload = _payload(event.name, info, upload={
            "id": event.upload_id, "offset": event.offset, "length": event.length,
            "metadata": event.metadata})
        if event.stored is not None:
            payload["file"] = event.stored
        spooled = self._spool(payload) if event.name in _SPOOLED else None
        self._start_thread()
        self._queue.put((payload, spooled))

    def storage_call(self, *args) -> None:
        pass

    def lock_wait(self, *args) -> None:
        pass

    def deliver(self, payload: dict, attempts: int) -> bool:
        """Try every target up to ``attempts`` times each; True when all took it."""
        name = payload["event"]
        pending = list(self.targets)
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            failed = []
            for target in pending:
                try:
                    target(name, payload)
                    self._on_delivery(name, True)
                except Exception as error:
                    self._on_delivery(name, False)
                    log.warning("%s hook %s for %s failed (attempt %d of %d): %s", name,
                                target, payload["upload"]["id"], attempt + 1, attempts, error)
                    failed.append(target)
            if not failed:
                return True
            pending = failed
        return False

    def redeliver_spooled(self, older_than: float = 60.0) -> int:
        """Deliver spooled events whose retries ran out, or whose worker died (the sweep).

        A record whose pid does not run here is taken only once ``older_than`` seconds
        old: the pid may be a live process of another host or container sharing the
        spool; an exhausted record is nobody's any more."""
        if not self.spool_dir:
            return 0
        delivered = 0
        for name in sorted(os.listdir(self.spool_dir)):
            path = os.path.join(self.spool_dir, name)
            try:
                if not name.endswith(".json"):
                    continue
                age = time.time() - os.stat(path).st_mtime
                with open(path, encoding="utf-8") as handle:
                    record = json.load(handle)
            except (OSError, ValueError):
                continue
            if not record.get("exhausted") and (process_alive(record.get("pid"))
                                                or age < older_than):
                continue  # its worker is still retrying it
            if self.deliver(record["payload"], 1):
                _unlink(path)
                delivered += 1
        return delivered

    # the thread --------------------------------------------------------------------
    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread_pid != os.getpid():  # first event in this (forked) worker
                self._queue = queue.Queue()
                threading.Thread(target=self._run, name="spillway-hooks", daemon=True).start()
                self._thread_pid = os.getpid()

    def _run(self) -> None:
        while True:
            payload, spooled = self._queue.get()
            attempts = 1 if payload["event"] == "post-receive" else 1 + self.retries
            if self.deliver(payload, attempts):
                if spooled:
                    _unlink(spooled)
            elif spooled:
                self._write(spooled, payload, exhausted=True)

    def _spool(self, payload: dict) -> str | None:
        if not self.spool_dir:
            return None
        path = os.path.join(self.spool_dir, f"{payload['id']}.json")
        self._write(path, payload, exhausted=False)
        return path

    @staticmethod
    def _write(path: str, payload: dict, exhausted: bool) -> None:
        temp = path + ".new"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "exhausted": exhausted, "payload": payload}, handle)
        os.rename(temp, path)


def _payload(name: str, info: RequestInfo | None, **fields) -> dict:
    return {"event": name, "id": uuid.uuid4().hex,
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": info.request_id if info else None,
            "token": info.token_name if info else None, **fields}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
