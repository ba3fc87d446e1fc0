"""A 1 GiB tus upload cut three times at random points resumes to the right SHA-256,
while the workers' memory stays flat (gunicorn and uWSGI, 2 worker processes)."""

from __future__ import annotations

import random
import shutil
import threading
import time

import pytest

from tests.conftest import TOKEN_RW
from tests.patterned import PatternedBytes
from app.testing.servers import start_server
from tests.tus_wire import (new_upload, open_patch, read_status, resumable_offset,
                             stored_sha256)

SIZE = 1 << 30
STEP = 1 << 20


@pytest.fixture(scope="module")
def gigabyte():
    return PatternedBytes(SIZE)


def send_range(sock, source: PatternedBytes, start: int, stop: int) -> None:
    for chunk in source.chunks(start, stop):
        sock.sendall(chunk)


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_gigabyte_cut_three_times_resumes_in_flat_memory(kind, gigabyte, tmp_path):
    server = start_server(kind, tmp_path / "store", tmp_path, workers=2, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write", "SPILLWAY_MAX_FILE_SIZE": "2G",
        "SPILLWAY_MAX_REQUEST_SIZE": "2G"})
    try:
        location = new_upload(server.url, SIZE)  # also warms both code paths up
        time.sleep(0.5)
        idle = server.workers_rss_kib()
        peak = idle
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, server.workers_rss_kib())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        cuts = sorted(random.Random(20261130).sample(range(1, SIZE), 3))
        started = time.monotonic()
        at = 0
        try:
            for cut in cuts:
                sock = open_patch(server.url, location, at, SIZE - at)
                send_range(sock, gigabyte, at, cut)
                sock.close()  # the client vanishes mid-body
                # every byte that arrived is kept
                assert resumable_offset(server.url, location, arrived=cut) == cut
                at = cut
            sock = open_patch(server.url, location, at, SIZE - at)
            send_range(sock, gigabyte, at, SIZE)
            assert read_status(sock) == 204
            sock.close()
            seconds = time.monotonic() - started
        finally:
            sampling = False
            sampler.join()
        assert stored_sha256(server.url, location) == gigabyte.sha256
        grown_mib = (peak - idle) / 1024
        print(f"\n{kind}: 1 GiB in 4 PATCHes (cuts at {cuts}) in {seconds:.1f} s; "
              f"workers' RSS idle {idle / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
              f"(+{grown_mib:.1f} MiB)")
        assert grown_mib < 30
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "store", ignore_errors=True)  # a gigabyte: not kept for CI
