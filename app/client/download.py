"""Resumable downloads: FILE.part (+ FILE.part.etag, the version its bytes belong to),
Range/If-Range to continue, SHA-256 checked before the rename to FILE."""

from __future__ import annotations

import hashlib
import os

from .errors import ClientError, IntegrityError, from_response

CHUNK = 1 << 20


def target_name(meta: dict) -> str:
    """The stored filename reduced to a safe basename in the current directory."""
    name = os.path.basename((meta.get("filename") or "").replace("\\", "/")).strip()
    if name in ("", ".", "..") or name.startswith("."):
        name = meta["id"] if not name.strip(".") else "_" + name
    return name


def download_file(client, meta: dict, output: str | None, resume: bool = True) -> dict:
    target = output or target_name(meta)
    job = _Download(client, meta, target)
    if not resume:
        job.discard()
    resumed_from = job.offset_on_disk()
    client.backoff.run(job.attempt, what=f"download {meta['id']}")
    job.finish()
    return {"id": meta["id"], "path": target, "size": meta["size"], "sha256": meta["sha256"],
            "resumed_from": resumed_from}


class _Download:
    def __init__(self, client, meta: dict, target: str):
        self.client = client
        self.meta = meta
        self.target = target
        self.part = target + ".part"
        self.tag_path = self.part + ".etag"
        self.expected_etag = '"%s"' % meta["sha256"]
        self.digest = None

    def offset_on_disk(self) -> int:
        """Bytes of .part usable for a resume: only with a recorded ETag to send in If-Range."""
        if not (os.path.exists(self.part) and self._recorded_etag()):
            return 0
        return os.path.getsize(self.part)

    def attempt(self) -> None:
        """One GET continuing from what is on disk; raises transient errors for a retry."""
        offset = self.offset_on_disk()
        etag = self._recorded_etag()
        if offset and offset >= self.meta["size"] and etag == self.expected_etag:
            self.digest = _hash_file(self.part)  # complete already (cut before the rename)
            return
        headers = {}
        if offset:
            headers = {"Range": f"bytes={offset}-", "If-Range": etag}
        url = f"{self.client.url}/files/{self.meta['id']}/content"
        with self.client.session.get(url, headers=headers, stream=True,
                                     timeout=self.client.timeout) as response:
            if response.status_code >= 400:
                raise from_response(response)
            if response.status_code == 206:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start != offset:
                    raise ClientError(f"asked for bytes from {offset}, got {start}",
                                      code="bad_range")
                digest, mode = _hash_file(self.part), "ab"
            else:  # 200: the whole file again (no resume, or If-Range said it changed)
                offset, digest, mode = 0, hashlib.sha256(), "wb"
            self._record_etag(response.headers.get("ETag") or self.expected_etag)
            bar = self.client.progress(self.meta["size"], self.target, offset)
            try:
                with open(self.part, mode) as out:
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            finally:
                bar.close()
            self.digest = digest

    def finish(self) -> None:
        actual = self.digest.hexdigest()
        size = os.path.getsize(self.part)
        if actual != self.meta["sha256"] or size != self.meta["size"] \
                or self._recorded_etag() != self.expected_etag:
            self.discard()
            raise IntegrityError(
                f"downloaded {size} bytes with sha256 {actual}; the server says "
                f"{self.meta['size']} bytes, sha256 {self.meta['sha256']}",
                code="sha256_mismatch")
        os.replace(self.part, self.target)
        _remove(self.tag_path)

    def discard(self) -> None:
        _remove(self.part)
        _remove(self.tag_path)

    def _recorded_etag(self) -> str | None:
        try:
            with open(self.tag_path) as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def _record_etag(self, etag: str) -> None:
        with open(self.tag_path, "w") as handle:
            handle.write(etag)


def _range_start(content_range: str) -> int:
    try:  # "bytes 100-199/200"
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _hash_file(path: str):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
