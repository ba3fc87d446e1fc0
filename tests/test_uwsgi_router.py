"""uwsgi.ini:http-router: who answers `Expect: 100-continue` when the router may too.

The live suite (tests/test_live.py) runs in full against the router; this checks the one
router option the app has to follow: with http-manage-expect on, the router says
"100 Continue" and the app must not say it again; uWSGI reads "true" there as 0 (off),
so then the app has to."""

import json
import subprocess

import pytest

from tests.conftest import sha256_of
from app.testing.servers import start_server


@pytest.mark.parametrize("manage_expect", ["1", "true"])
def test_exactly_one_100_continue(tmp_path, manage_expect):
    """"1": the router answers and the app keeps quiet (twice would show as two 100s);
    "true": nobody would answer unless the app does (curl would wait 10 s)."""
    server = start_server("uwsgi-router", tmp_path / "store", tmp_path,
                          env={"UWSGI_HTTP_MANAGE_EXPECT": manage_expect})
    try:
        path = tmp_path / "expect.bin"
        path.write_bytes(bytes(range(256)) * (8 << 10))  # 2 MiB
        result = subprocess.run(
            ["curl", "-sS", "-v", "-T", str(path), "-H", "Expect: 100-continue",
             "--expect100-timeout", "10", "-w", "\n%{http_code} %{time_total}",
             f"{server.url}/upload/"], capture_output=True, timeout=60)
        body, _, tail = result.stdout.rpartition(b"\n")
        status, elapsed = tail.split()
        assert int(status) == 201 and json.loads(body)["sha256"] == sha256_of(path)
        assert result.stderr.count(b"< HTTP/1.1 100 Continue") == 1, result.stderr.decode()
        assert float(elapsed) < 1.0, f"curl waited {elapsed} s for a 100"
    finally:
        server.stop()
