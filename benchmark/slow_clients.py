"""``python -m benchmark.slow_clients``: what slow clients cost a thread-per-request server.

Opens N connections that send half a request head and then nothing (or trickle a body),
then sends normal 1 MiB uploads from a few client threads and counts how many succeed
within the client's timeout, per server set-up.  Loopback only; every process is ours.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from app.testing.nginx import Nginx
from app.testing.servers import start_server

HALF_HEAD = b"PUT /upload/never.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Len"


def hold_half_heads(url: str, count: int) -> list[socket.socket]:
    host, port = url.split("//")[1].split(":")
    held = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(HALF_HEAD)
        held.append(sock)
    return held


def normal_uploads(url: str, count: int, parallel: int, timeout: float) -> list[float | None]:
    """Seconds each upload took, None for those that failed or timed out."""
    data = os.urandom(1 << 20)

    def one(number: int) -> float | None:
        started = time.monotonic()
        try:
            answer = requests.put(f"{url}/upload/normal-{number}.bin", data=data,
                                  timeout=(timeout, timeout))
        except requests.RequestException:
            return None
        return time.monotonic() - started if answer.status_code == 201 else None

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, range(count)))


def scenario(name: str, url: str, args) -> str:
    held = hold_half_heads(url, args.slow)
    time.sleep(1)
    try:
        took = normal_uploads(url, args.uploads, args.parallel, args.timeout)
    finally:
        for sock in held:
            sock.close()
    done = [t for t in took if t is not None]
    median = f"{statistics.median(done):.1f}" if done else "-"
    slowest = f"{max(done):.1f}" if done else "-"
    return (f"| {name} | {args.slow} | {len(done)} of {len(took)} | {median} | {slowest} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=50, help="half-head connections")
    parser.add_argument("--uploads", type=int, default=30, help="normal 1 MiB uploads")
    parser.add_argument("--parallel", type=int, default=6, help="client threads uploading")
    parser.add_argument("--timeout", type=float, default=30, help="each upload's client timeout")
    parser.add_argument("--head-timeout", default="10", help="SPILLWAY_HEAD_TIMEOUT")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    setups = [
        ("gunicorn, plain gthread (no head deadline)", "gunicorn",
         {"GUNICORN_CMD_ARGS": "--worker-class gthread"}),
        (f"gunicorn, head deadline {args.head_timeout} s", "gunicorn",
         {"SPILLWAY_HEAD_TIMEOUT": args.head_timeout}),
        ("uWSGI http-socket, socket-timeout 60 s", "uwsgi", {"SPILLWAY_READ_TIMEOUT": "60"}),
        ("uWSGI http-socket, socket-timeout 10 s", "uwsgi", {"SPILLWAY_READ_TIMEOUT": "10"}),
    ]
    print("| set-up (2 workers × 8 threads) | half heads | uploads ok | median s | max s |")
    print("|---|---:|---:|---:|---:|")
    for number, (name, kind, env) in enumerate(setups):
        server = start_server(kind, base / f"store-{number}", base, env=env, workers=2)
        try:
            print(scenario(name, server.url, args), flush=True)
            if kind == "gunicorn" and "GUNICORN_CMD_ARGS" in env:
                nginx = Nginx("proxy", base / "nginx", BACKEND=server.url.split("//")[1],
                              STORAGE_DIR=str(base / f"store-{number}")).start()
                try:
                    print(scenario("nginx (proxy.conf) → that plain gthread", nginx.url, args),
                          flush=True)
                finally:
                    nginx.stop()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
