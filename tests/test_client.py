"""The client (`python -m app.client`) as a real subprocess against live servers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import TOKEN_RO, TOKEN_RW, sha256_of
from tests.cutting_server import CuttingServer
from app.testing.servers import ROOT, free_port, rss_kib, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("client-server")
    live = start_server("gunicorn", base / "store", base, env={
        "SPILLWAY_ENABLE_BASELINE": "true",
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write,{TOKEN_RO}:read",
        "SPILLWAY_PAGE_SIZE": "2",
    })
    yield live
    live.stop()


def client_command(url: str, *args: str, token: str | None = TOKEN_RW) -> list[str]:
    command = [sys.executable, "-m", "app.client", "--url", url, "--backoff", "0.01"]
    if token:
        command += ["--token", token]
    return command + list(args)


def run_client(url: str, *args: str, token: str | None = TOKEN_RW, cwd: Path = ROOT,
               timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(client_command(url, *args, token=token), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def lines(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize("method", ["stream", "multipart", "files"])
@pytest.mark.parametrize("digest", [False, True])
def test_upload_each_method_then_download_the_same_bytes(server, tmp_path, method, digest):
    source = random_file(tmp_path / "source.bin", 3_000_001)
    args = ["upload", str(source), "--method", method] + (["--digest"] if digest else [])
    result = run_client(server.url, *args)
    assert result.returncode == 0, result.stderr
    [record] = lines(result)
    assert record["sha256"] == sha256_of(source)
    assert record["size"] == source.stat().st_size and record["filename"] == "source.bin"

    copy = tmp_path / "copy.bin"
    result = run_client(server.url, "download", record["id"], "-o", str(copy))
    assert result.returncode == 0, result.stderr
    assert copy.read_bytes() == source.read_bytes()
    assert lines(result)[0]["resumed_from"] == 0
    assert not (tmp_path / "copy.bin.part").exists()


def test_upload_many_files_and_a_chosen_name(server, tmp_path):
    sources = [random_file(tmp_path / f"f{i}.bin", 100_000 * (i + 1)) for i in range(3)]
    result = run_client(server.url, "upload", *map(str, sources))
    assert result.returncode == 0, result.stderr
    records = lines(result)
    assert [r["filename"] for r in records] == ["f0.bin", "f1.bin", "f2.bin"]
    assert [r["sha256"] for r in records] == [sha256_of(p) for p in sources]

    named = run_client(server.url, "upload", str(sources[0]), "--name", "renamed.dat")
    assert lines(named)[0]["filename"] == "renamed.dat"
    refused = run_client(server.url, "upload", *map(str, sources), "--name", "x")
    assert refused.returncode == 2 and "one FILE" in refused.stderr


def test_download_defaults_to_the_stored_name_made_safe(server, tmp_path):
    source = random_file(tmp_path / "src.bin", 5000)
    record = lines(run_client(server.url, "upload", str(source), "--name", "../../evil.txt"))[0]
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_client(server.url, "download", record["id"], cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert os.listdir(workdir) == ["evil.txt"]
    assert (workdir / "evil.txt").read_bytes() == source.read_bytes()
    nowhere = run_client(server.url, "download", record["id"], "-o", str(tmp_path / "no" / "x"))
    assert nowhere.returncode == 1 and "No such file" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr


def test_list_pages_info_and_delete(server, tmp_path):
    sources = [random_file(tmp_path / f"l{i}.bin", 1000 + i) for i in range(5)]
    ids = [r["id"] for r in lines(run_client(server.url, "upload", *map(str, sources)))]

    first_page = lines(run_client(server.url, "list"))
    assert len(first_page) == 2  # SPILLWAY_PAGE_SIZE
    everything = lines(run_client(server.url, "list", "--all", token=TOKEN_RO))
    listed = [r["id"] for r in everything]
    assert len(listed) == len(set(listed)) and set(ids) <= set(listed) and len(listed) > 2

    info = run_client(server.url, "info", ids[0])
    assert lines(info)[0]["sha256"] == sha256_of(sources[0])

    deleted = run_client(server.url, "delete", ids[0])
    assert deleted.returncode == 0 and lines(deleted) == [{"id": ids[0], "deleted": True}]
    gone = run_client(server.url, "info", ids[0])
    assert gone.returncode == 4 and "not_found" in gone.stderr
    assert ids[0] not in [r["id"] for r in lines(run_client(server.url, "list", "--all"))]


def test_auth_and_not_found_errors(server, tmp_path):
    source = random_file(tmp_path / "a.bin", 1000)
    bad = run_client(server.url, "upload", str(source), token="not-a-valid-token")
    assert bad.returncode == 3 and "invalid_token" in bad.stderr and bad.stdout == ""
    anonymous = run_client(server.url, "list", token=None)
    assert anonymous.returncode == 3 and "unauthorized" in anonymous.stderr
    read_only = run_client(server.url, "upload", str(source), token=TOKEN_RO)
    assert read_only.returncode == 3 and "forbidden" in read_only.stderr
    missing = run_client(server.url, "download", "0" * 32, "-o", str(tmp_path / "x"))
    assert missing.returncode == 4 and "not_found" in missing.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
    no_file = run_client(server.url, "upload", str(tmp_path / "nope.bin"))
    assert no_file.returncode == 2 and "nope.bin" in no_file.stderr


def test_too_large_is_exit_5(tmp_path):
    small = start_server("gunicorn", tmp_path / "store", tmp_path, env={
        "SPILLWAY_MAX_REQUEST_SIZE": "1M", "SPILLWAY_MAX_FILE_SIZE": "1M"})
    try:
        source = random_file(tmp_path / "big.bin", 3 << 20)
        for method in ("stream", "multipart"):
            result = run_client(small.url, "upload", str(source), "--method", method, token=None)
            assert result.returncode == 5, (method, result.stderr)
            assert "request_too_large" in result.stderr
    finally:
        small.stop()


def test_unreachable_server_is_exit_7_after_bounded_retries(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_client(url, "--retries", "3", "list")
    assert result.returncode == 7 and "connection" in result.stderr.lower()
    source = random_file(tmp_path / "a.bin", 1000)
    upload = run_client(url, "--retries", "2", "upload", str(source))
    assert upload.returncode == 7
    assert time.monotonic() - started < 15


def test_interrupted_download_resumes_with_range_from_the_half(tmp_path):
    data = os.urandom(4 << 20)
    with CuttingServer(data) as cutting:
        result = run_client(cutting.url, "download", "f1", "-o", str(tmp_path / "out.bin"))
        assert result.returncode == 0, result.stderr
        assert sha256_of(tmp_path / "out.bin") == hashlib.sha256(data).hexdigest()
        first, second = cutting.content_requests()
        assert first["range"] is None and first["cut"]
        assert second["range"] == f"bytes={len(data) // 2}-"
        assert second["if_range"] == f'"{cutting.sha256}"' and second["status"] == 206
    assert not list(tmp_path.glob("*.part*"))


def test_a_stale_part_of_another_version_restarts_from_zero(tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "out.bin.part").write_bytes(os.urandom(300_000))
    (tmp_path / "out.bin.part.etag").write_text('"an-older-version"')
    with CuttingServer(data, cut_first=False) as cutting:
        result = run_client(cutting.url, "download", "f1", "-o", str(tmp_path / "out.bin"))
        assert result.returncode == 0, result.stderr
        [request] = cutting.content_requests()
        assert request["if_range"] == '"an-older-version"' and request["status"] == 200
    assert (tmp_path / "out.bin").read_bytes() == data
    assert lines(result)[0]["resumed_from"] == 300_000


def test_resume_against_the_real_server_and_no_resume(server, tmp_path):
    source = random_file(tmp_path / "r.bin", 2_000_000)
    record = lines(run_client(server.url, "upload", str(source)))[0]
    part = tmp_path / "out.bin.part"
    part.write_bytes(source.read_bytes()[:700_000])
    (tmp_path / "out.bin.part.etag").write_text(f'"{record["sha256"]}"')
    result = run_client(server.url, "download", record["id"], "-o", str(tmp_path / "out.bin"))
    assert result.returncode == 0, result.stderr
    assert lines(result)[0]["resumed_from"] == 700_000
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()

    part.write_bytes(b"garbage that --no-resume must throw away")
    (tmp_path / "out.bin.part.etag").write_text(f'"{record["sha256"]}"')
    again = run_client(server.url, "download", record["id"], "-o", str(tmp_path / "out2.bin"),
                       "--no-resume")
    assert again.returncode == 0 and lines(again)[0]["resumed_from"] == 0
    assert (tmp_path / "out2.bin").read_bytes() == source.read_bytes()


def test_download_with_the_wrong_bytes_is_exit_6_and_leaves_nothing(tmp_path):
    with CuttingServer(os.urandom(100_000), cut_first=False, corrupt=True) as cutting:
        result = run_client(cutting.url, "download", "f1", "-o", str(tmp_path / "out.bin"))
    assert result.returncode == 6 and "sha256" in result.stderr
    assert os.listdir(tmp_path) == []


def test_profile_writes_a_pstats_report(server, tmp_path):
    source = random_file(tmp_path / "p.bin", 200_000)
    report = tmp_path / "profile.txt"
    result = run_client(server.url, f"--profile={report}", "upload", str(source))
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert "cumulative" in text and "upload" in text and "function calls" in text
    to_stderr = run_client(server.url, "info", lines(result)[0]["id"], "--profile")
    assert to_stderr.returncode == 0 and "cumulative" in to_stderr.stderr
    before = run_client(server.url, "--profile", "info", lines(result)[0]["id"])
    assert before.returncode == 0 and "cumulative" in before.stderr and "info" in before.stderr


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} for {pid}")


def watch_memory(command: list[str], stdout=subprocess.DEVNULL) -> tuple[int, list[int], int]:
    """Run command, sampling VmRSS every 5 ms; (exit code, RSS samples, last VmHWM seen).

    VmHWM (the process's own peak) is read from /proc rather than taken from wait4's
    ru_maxrss, which also counts the pytest process the child was forked from.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout,
                               stderr=subprocess.DEVNULL)
    samples, peak = [], 0
    while process.poll() is None:
        try:
            samples.append(rss_kib(process.pid))
            peak = max(peak, status_kib(process.pid, "VmHWM"))
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    return process.returncode, samples, max([peak, *samples])  # the last VmHWM read may miss


def test_300_mb_uploads_and_download_in_constant_memory(server, tmp_path, big_file):
    tiny = random_file(tmp_path / "tiny.bin", 1000)
    code, _, tiny_peak = watch_memory(client_command(server.url, "upload", str(tiny)))
    assert code == 0 and tiny_peak > 10_000
    copy = tmp_path / "copy.bin"
    steps = {
        "stream": ["upload", str(big_file), "--method", "stream"],
        "multipart": ["upload", str(big_file), "--method", "multipart"],
        "download": ["download", "", "-o", str(copy)],
    }
    for step, args in steps.items():
        output = tmp_path / f"{step}.json"
        with output.open("w") as stdout:
            code, samples, peak = watch_memory(client_command(server.url, *args), stdout)
        assert code == 0, step
        [record] = [json.loads(line) for line in output.read_text().splitlines()]
        assert record["sha256"] == sha256_of(big_file)
        if step == "stream":
            steps["download"][1] = record["id"]  # download what was just uploaded
        assert len(samples) > 20  # it was watched while it ran
        growth_mib = (peak - tiny_peak) / 1024
        print(f"{step}: client peak RSS (VmHWM) {peak} KiB for 300 MB vs {tiny_peak} KiB for a "
              f"tiny upload, growth {growth_mib:.1f} MiB")
        assert growth_mib < 30, step
    assert sha256_of(copy) == sha256_of(big_file)


def test_an_upload_cut_mid_body_is_not_sent_again(tmp_path):
    source = random_file(tmp_path / "a.bin", 2 << 20)
    with CuttingServer(b"") as cutting:
        for method in ("stream", "multipart"):
            result = run_client(cutting.url, "--retries", "3", "upload", str(source),
                                "--method", method)
            assert result.returncode == 7, result.stderr
    assert [r["method"] for r in cutting.requests] == ["PUT", "POST"]  # once each, no retry
    assert all(0 < r["received"] < r["length"] for r in cutting.requests)


def test_5xx_answers_are_retried_then_reported_as_exit_7(tmp_path):
    with CuttingServer(b"abc" * 1000, cut_first=False, unavailable=2) as cutting:
        result = run_client(cutting.url, "--retries", "2", "info", "f1")
        assert result.returncode == 0, result.stderr
        assert [r["status"] for r in cutting.requests] == [503, 503, 200]
    with CuttingServer(b"abc", cut_first=False, unavailable=10) as cutting:
        result = run_client(cutting.url, "--retries", "2", "download", "f1",
                            "-o", str(tmp_path / "x"))
        assert result.returncode == 7 and "503 unavailable: try later" in result.stderr
        assert len(cutting.requests) == 3 and not os.listdir(tmp_path)


def test_a_server_storing_other_bytes_than_sent_is_exit_6(tmp_path):
    source = random_file(tmp_path / "a.bin", 300_000)
    with CuttingServer(b"", cut_uploads=False) as cutting:
        for method in ("stream", "multipart", "files"):
            result = run_client(cutting.url, "upload", str(source), "--method", method)
            assert result.returncode == 6, (method, result.stderr)
            assert sha256_of(source) in result.stderr and "0" * 64 in result.stderr
    assert [r["received"] for r in cutting.requests][0] == 300_000


def test_steps_are_retried_until_a_late_server_answers(tmp_path):
    """Connection refused before any byte is sent: uploads and reads are retried."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    source = random_file(tmp_path / "a.bin", 10_000)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    options = ["--retries", "8", "--backoff", "0.2"]  # waits 0.2, 0.4, ... up to ~50 s in all
    upload = subprocess.Popen(client_command(url, *options, "upload", str(source), token=None),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert upload.poll() is None  # still retrying
    late = start_server("gunicorn", tmp_path / "store", tmp_path,
                        env={"SPILLWAY_BIND": f"127.0.0.1:{port}"})
    try:
        out, err = upload.communicate(timeout=60)
        assert upload.returncode == 0, err
        assert json.loads(out)["sha256"] == sha256_of(source)
    finally:
        late.stop()


def test_progress_bar_only_on_a_terminal(server, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    source = random_file(tmp_path / "a.bin", 5 << 20)
    leader, follower = pty.openpty()
    # a real terminal has a size; tqdm draws nothing into 0 columns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(client_command(server.url, "upload", str(source)), cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    shown = bytearray()

    def drain():  # read while it runs: Linux may drop what is left once the pty closes
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = process.communicate(timeout=30)
    reader.join(10)
    os.close(leader)
    assert process.returncode == 0
    assert b"a.bin" in shown and b"100%" in shown and b"5.00M" in shown
    assert json.loads(out)["sha256"] == sha256_of(source)  # stdout stays clean JSON
    quiet = run_client(server.url, "upload", str(source), "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_the_client_loads_no_server_code():
    probe = ("import sys, app.client.cli; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('flask', 'werkzeug', 'streaming_form_data', 'gunicorn') "
             "or (m.startswith('app.') and not m.startswith('app.client'))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout
