"""``python -m benchmark --storage s3``: Spillway on an S3 store (SeaweedFS, started here)
against the client-side limit measured in the same run on the same store.

Rows: raw, multipart, tus (one PATCH) and download through Spillway on gunicorn and
uWSGI; boto3's managed transfer (``upload_file``/``download_file``: parallel parts) and
``aws s3 cp`` when installed, as references; then scaling out: one upload to one host,
three at once to one host, one to each of three hosts at once (aggregate MB/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from shutil import rmtree, which

from app.settings import parse_size
from app.testing.seaweed import start_seaweed
from app.testing.servers import ROOT, start_server

from . import transfers
from .fleet import server_env
from .memory import PeakSampler

BUCKET = "bench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmark --storage s3", description=__doc__)
    parser.add_argument("--storage", choices=["s3"], required=True)
    parser.add_argument("--sizes", default="256M", help="comma-separated (default 256M)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="64M, one run")
    parser.add_argument("--servers", default="gunicorn,uwsgi")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--part-size", default="16M", help="SPILLWAY_S3_PART_SIZE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = "64M", 1
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.servers = [s for s in args.servers.split(",") if s]
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(action) -> tuple[bool, float, str]:
    started = time.perf_counter()
    try:
        action()
        return True, time.perf_counter() - started, ""
    except Exception as error:  # a failed cell is reported, the run goes on
        return False, time.perf_counter() - started, f"{type(error).__name__}: {error}"[:200]


class S3Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.weed = start_seaweed(workdir / "weed")
        self.weed.make_bucket(BUCKET)
        self.client = self.weed.client()
        self.hosts: dict[str, object] = {}
        self.rows: list[dict] = []

    def host(self, name: str, kind: str):
        if name not in self.hosts:
            env = server_env(self.workdir / name / "store") | self.weed.env(
                BUCKET, SPILLWAY_S3_PART_SIZE=str(parse_size(self.args.part_size)))
            (self.workdir / name / "spool").mkdir(parents=True, exist_ok=True)
            self.hosts[name] = start_server(kind, self.workdir / name / "store", self.workdir,
                                            env=env, workers=self.args.workers)
            log(f"started {name} ({kind}) on {self.hosts[name].url}")
            warm = transfers.requests.put(f"{self.hosts[name].url}/upload/warm.bin",
                                          data=os.urandom(32 << 20), timeout=120)
            transfers.delete(self.hosts[name].url, warm.json().get("id"))
        return self.hosts[name]

    def record(self, group: str, method: str, size: int, repeat: int,
               outcome: tuple[bool, float, str], count: int = 1,
               growth_kib: int | None = None) -> None:
        ok, seconds, detail = outcome
        row = {"group": group, "method": method, "size": size, "repeat": repeat, "ok": ok,
               "seconds": round(seconds, 3), "mb_s": round(count * size / seconds / 1e6, 1)
               if ok else None, "detail": detail, "growth_kib": growth_kib}
        self.rows.append(row)
        grown = "" if growth_kib is None else f", RSS +{growth_kib / 1024:.1f} MiB"
        log(f"{group:>9} {method:<28} {size >> 20} MiB #{repeat}: "
            f"{row['mb_s'] if ok else 'FAILED ' + detail} MB/s{grown}")

    def on(self, server, group: str, method: str, size: int, repeat: int, action) -> None:
        """Time ``action()`` (-> ok, seconds, detail) while sampling the host's RSS."""
        with PeakSampler([server.process.pid]) as sampler:
            outcome = action()
        self.record(group, method, size, repeat, outcome,
                    growth_kib=sampler.peak_total_kib - sampler.idle.total_kib)

    # --- the cells ---------------------------------------------------------------------------
    def spillway(self, kind: str, path: Path, size: int, sha256: str, repeat: int) -> None:
        server = self.host(kind, kind)
        scratch = self.workdir / "scratch"
        scratch.mkdir(exist_ok=True)
        for method in ("raw", "multipart"):
            sent = []

            def send(method=method):
                sent.append(transfers.upload(method, server.url, path, size, sha256, scratch))
                return sent[0].status == "ok", sent[0].seconds, sent[0].detail

            self.on(server, kind, method, size, repeat, send)
            result = sent[0]
            if method == "raw" and result.status == "ok":
                url = f"{server.url}/files/{result.file_id}/content"

                def fetch():
                    got = transfers.download(url, size, scratch)
                    return got.status == "ok", got.seconds, got.detail

                self.on(server, kind, "download", size, repeat, fetch)
            transfers.delete(server.url, result.file_id)
        self.on(server, kind, "tus (one PATCH)", size, repeat,
                lambda: timed(lambda: tus_upload(server.url, path, size, sha256)))

    def references(self, path: Path, size: int, repeat: int) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig()  # the defaults: 8 MiB parts, 10 threads
        key = f"reference/{path.name}"
        self.record("reference", "boto3 upload_file", size, repeat, timed(
            lambda: self.client.upload_file(str(path), BUCKET, key, Config=config)))
        target = self.workdir / "scratch" / "boto3.bin"
        self.record("reference", "boto3 download_file", size, repeat, timed(
            lambda: self.client.download_file(BUCKET, key, str(target), Config=config)))
        target.unlink(missing_ok=True)
        if which("aws"):
            env = os.environ | {k: v for k, v in self.weed.env(BUCKET).items()
                                if k.startswith("AWS_")}
            command = ["aws", "--endpoint-url", self.weed.endpoint, "s3", "cp", "--quiet",
                       str(path), f"s3://{BUCKET}/reference/aws.bin"]
            self.record("reference", "aws s3 cp (upload)", size, repeat, timed(
                lambda: subprocess.run(command, env=env, check=True, capture_output=True)))
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def scale_out(self, path: Path, size: int, sha256: str, repeat: int) -> None:
        """Raw uploads at once: aggregate MB/s of all of them."""
        hosts = [self.host(name, "gunicorn") for name in ("gunicorn", "host-b", "host-c")]
        for label, targets in (("1 host, 1 upload", hosts[:1]),
                               ("1 host, 3 uploads at once", hosts[:1] * 3),
                               ("3 hosts, 1 upload each", hosts)):
            self.record("scale-out", label, size, repeat,
                        timed(lambda: concurrent_uploads(targets, path, size, sha256,
                                                         self.workdir)), count=len(targets))

    def stop(self) -> None:
        for server in self.hosts.values():
            server.stop()
        self.weed.stop()


def tus_upload(url: str, path: Path, size: int, sha256: str) -> str:
    import requests

    created = requests.post(url + "/tus/", timeout=30, headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(size),
        "Upload-Metadata": "filename YmVuY2guYmlu"})
    created.raise_for_status()
    location = url + created.headers["Location"]
    done = subprocess.run(transfers.CURL + [
        "-X", "PATCH", "-T", str(path), "-o", "/dev/null", "-w", "%{http_code}",
        "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
        "-H", "Content-Type: application/offset+octet-stream", location],
        capture_output=True, text=True, timeout=transfers.timeout_for(size))
    if done.stdout.strip() != "204":
        raise RuntimeError(f"PATCH answered {done.stdout.strip()}: {done.stderr[:200]}")
    file_id = location.rsplit("/", 1)[1]
    stored = requests.get(f"{url}/files/{file_id}", timeout=30).json()
    transfers.delete(url, file_id)
    if stored.get("sha256") != sha256:
        raise RuntimeError(f"sha256 {stored.get('sha256')} != {sha256}")
    return ""


def concurrent_uploads(servers: list, path: Path, size: int, sha256: str, workdir: Path) -> str:
    outcomes = [None] * len(servers)

    def send(index: int) -> None:
        scratch = workdir / f"scratch-{index}"
        scratch.mkdir(exist_ok=True)
        outcomes[index] = transfers.upload("raw", servers[index].url, path, size, sha256,
                                           scratch)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for server, outcome in zip(servers, outcomes):
        transfers.delete(server.url, outcome.file_id)
    failed = [o.detail for o in outcomes if o.status != "ok"]
    if failed:
        raise RuntimeError("; ".join(failed))
    return ""


def summary(rows: list[dict], part_size: int) -> list[str]:
    """The median MB/s per (group, method, size), the ratios the goals name, the memory."""
    part_bound = 2 * part_size + 30e6
    cells: dict[tuple, list[float]] = {}
    for row in rows:
        if row["ok"]:
            cells.setdefault((row["group"], row["method"], row["size"]), []).append(row["mb_s"])
    median = {key: round(statistics.median(values), 1) for key, values in cells.items()}
    lines = ["| group | method | size | MB/s (median) | runs |", "|---|---|---|---|---|"]
    for (group, method, size), value in median.items():
        lines.append(f"| {group} | {method} | {size >> 20} MiB | {value} | "
                     f"{len(cells[(group, method, size)])} |")
    for size in sorted({key[2] for key in median}):
        up, down = median.get(("reference", "boto3 upload_file", size)), \
            median.get(("reference", "boto3 download_file", size))
        for (group, method, at), value in median.items():
            if at == size and group not in ("reference", "scale-out"):
                base = down if method == "download" else up
                if base:
                    lines.append(f"- {size >> 20} MiB {group} {method} ÷ boto3: "
                                 f"{value / base:.2f}")
        sampled = [r for r in rows if r["size"] == size and r.get("growth_kib") is not None]
        if sampled:
            worst = max(sampled, key=lambda r: r["growth_kib"])
            lines.append(f"- {size >> 20} MiB worst RSS growth of a host: "
                         f"+{worst['growth_kib'] / 1024:.1f} MiB ({worst['group']} "
                         f"{worst['method']}); bound 2 x part size + 30 MB: "
                         f"{'MET' if worst['growth_kib'] * 1024 <= part_bound else 'MISSED'}")
        one = median.get(("scale-out", "1 host, 1 upload", size))
        for label in ("1 host, 3 uploads at once", "3 hosts, 1 upload each"):
            if one and (value := median.get(("scale-out", label, size))):
                lines.append(f"- {size >> 20} MiB {label} ÷ 1 host, 1 upload: {value / one:.2f}")
    return lines


def main(argv: list[str]) -> int:
    from .cli import make_file

    args = parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "benchmark" / "results" / f"s3-{stamp}"
    workdir = Path(tempfile.mkdtemp(prefix="spillway-s3-bench-"))
    bench = None
    try:
        bench = S3Bench(args, workdir)
        for size in args.sizes:
            path = workdir / f"bench-{size >> 20}M.bin"
            sha256 = make_file(path, size)
            bench.client.upload_file(str(path), BUCKET, "warm-up")  # the store grows volumes
            bench.client.delete_object(Bucket=BUCKET, Key="warm-up")
            for repeat in range(1, args.repeats + 1):
                for kind in args.servers:
                    bench.spillway(kind, path, size, sha256, repeat)
                bench.references(path, size, repeat)
                bench.scale_out(path, size, sha256, repeat)
            path.unlink()
    finally:
        if bench is not None:
            bench.stop()
        rmtree(workdir, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    lines = summary(bench.rows, parse_size(args.part_size))
    meta = {"started": stamp, "command": " ".join(["python -m benchmark", *argv]),
            "cpus": os.cpu_count(), "part_size": args.part_size, "workers": args.workers}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": bench.rows}, indent=1))
    (out / "results.md").write_text("\n".join([f"# S3 benchmark {stamp}", "",
                                               f"`{meta['command']}`", ""] + lines) + "\n")
    print("\n".join(lines))
    log(f"results in {out}")
    return 0
