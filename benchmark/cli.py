"""``python -m benchmark``: run every method on every server, interleaved, and write the report."""

from __future__ import annotations

import argparse
import hashlib
import os
import logging
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from app import Settings, create_app
from app.settings import parse_size
from app.testing.nginx import nginx_binary
from app.testing.servers import ROOT, server_command

from . import ops_overhead, peers, report, transfers, tus
from .fleet import Fleet, Nginx, Target, router_available
from .memory import PeakSampler

SERVERS = ["flask", "gunicorn", "uwsgi", "uwsgi-router"]
METHODS = ["raw", "multipart", "files", "proxy", "download", "tus"]
QUICK_SIZES = "32M,128M"
FULL_SIZES = "256M,512M,1G,2G"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    parser.add_argument("--sizes", help=f"comma-separated sizes (default {FULL_SIZES}; "
                                         f"--quick: {QUICK_SIZES})")
    parser.add_argument("--repeats", type=int, help="runs of every cell (default 3; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes, two runs: < 2 minutes")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="among flask,gunicorn,uwsgi,uwsgi-router (default: all available)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="among raw,multipart,files,proxy,download,tus (default: all)")
    parser.add_argument("--proxy-servers", default="gunicorn,uwsgi",
                        help="server kinds run as a proxy front in front of the same kind")
    parser.add_argument("--proxy-route", default="/proxy/back/upload/{name}",
                        help="the front's route for a raw PUT to the backend")
    parser.add_argument("--proxy-targets", default="back={url}",
                        help="SPILLWAY_PROXY_TARGETS of the front ({url}: the backend)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes per server (GUNICORN_WORKERS / UWSGI_PROCESSES)")
    parser.add_argument("--ops-overhead", action="store_true", help="raw uploads with metrics "
                        "and JSON logs on and off, back to back (benchmark/ops_overhead.py)")
    parser.add_argument("--no-references", action="store_true",
                        help="skip the nginx, disk copy and hashlib rows")
    parser.add_argument("--workdir", type=Path, help="where files and storage go (default: a "
                                                      "new temp dir, removed afterwards)")
    parser.add_argument("--out", type=Path, help="results folder (default: "
                                                 "benchmark/results/<UTC time>, and 'latest')")
    args = parser.parse_args(argv)
    args.sizes = [parse_size(s) for s in (args.sizes or (QUICK_SIZES if args.quick
                                                         else FULL_SIZES)).split(",")]
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.servers = [s for s in args.servers.split(",") if s]
    args.methods = [m for m in args.methods.split(",") if m]
    args.proxy_servers = [s for s in args.proxy_servers.split(",") if s in args.servers]
    for name in args.servers + args.proxy_servers:
        server_command(name)  # ValueError on an unknown kind, before anything starts
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def proxy_route_exists() -> bool:
    """The proxy method needs Spillway's /proxy/<target>/<path> route (a later feature)."""
    logging.disable(logging.WARNING)  # create_app warns that no tokens are set: irrelevant here
    try:
        with tempfile.TemporaryDirectory() as scratch:  # the app creates its storage folders
            probe = create_app(Settings(storage_dir=scratch))
    finally:
        logging.disable(logging.NOTSET)
    return any(rule.rule.startswith("/proxy/") for rule in probe.url_map.iter_rules())


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes; their SHA-256.

    Random throughout, not a repeated pattern: on a virtual machine the host may merge or
    compress identical memory pages, and a file whose pages are all alike made the page
    cache behave unlike it does for real data (cells slowed down by up to 2x at random).
    """
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(0, size, 1 << 20):
            piece = os.urandom(min(1 << 20, size - index))
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


class Runner:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.scratch = workdir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.fleet = Fleet(workdir / "servers", args.workers, log)
        self.fleet.workdir.mkdir(parents=True, exist_ok=True)
        self.nginx: Nginx | None = None
        self.tus_node, self.tus_node_missing = None, "not started"
        self.peers: dict = {}
        self.rows: list[dict] = []
        self.notes: list[str] = []

    # --- set-up -----------------------------------------------------------------------------
    def start(self) -> None:
        servers = list(self.args.servers)
        if "uwsgi-router" in servers and not router_available():
            servers.remove("uwsgi-router")
            self.notes.append("uwsgi-router: not measured (uwsgi.ini has no [http-router])")
        for kind in servers:
            self.fleet.add(kind, kind)
        if "raw" in self.args.methods and "gunicorn" in servers:
            self.fleet.add("gunicorn-nohash", "gunicorn", command=[
                *server_command("gunicorn")[:-1], "benchmark.nohash:app"])
        if self.args.ops_overhead:
            ops_overhead.add_targets(self.fleet)
        self.proxy_ok = "proxy" in self.args.methods and proxy_route_exists()
        if "proxy" in self.args.methods and not self.proxy_ok:
            self.notes.append("proxy: unavailable (route missing: no /proxy/<target>/<path>)")
        if self.proxy_ok:
            for kind in self.args.proxy_servers:
                backend = self.fleet.targets[kind]
                self.fleet.add(f"{kind}-proxy", kind, backend=backend,
                               targets_template=self.args.proxy_targets)
        if not self.args.no_references:
            if nginx_binary():
                self.nginx = Nginx(self.workdir / "nginx", self.workdir / "files").start()
                log(f"started nginx on {self.nginx.url}")
            else:
                self.notes.append("nginx: not installed, no nginx reference rows")
            if {"raw", "multipart", "download"} & set(self.args.methods):
                self.peers, missing = peers.start_peers(self.workdir)
                self.notes += missing
                for peer in self.peers.values():
                    log(f"started {peer.name} on {peer.url}")
            if "tus" in self.args.methods:
                self.tus_node, self.tus_node_missing = tus.start_reference(self.workdir)
                log(f"started {tus.REFERENCE} on {self.tus_node.url}" if self.tus_node else
                    f"{tus.REFERENCE}: unavailable ({self.tus_node_missing})")
                if not self.tus_node:
                    self.notes.append(f"{tus.REFERENCE}: unavailable ({self.tus_node_missing})")

    def stop(self) -> None:
        self.fleet.stop()
        if self.nginx:
            self.nginx.stop()
        if self.tus_node:
            self.tus_node.stop()
        for peer in self.peers.values():
            peer.stop()

    # --- one cell ---------------------------------------------------------------------------
    def measure(self, size: int, repeat: int, method: str, server: str, roots, alive, run):
        """Time ``run()`` while sampling the RSS of ``roots``; record one row."""
        # Every cell starts with no dirty pages: otherwise the kernel is still writing the
        # previous cell's gigabytes back while this one runs, and whichever cell comes
        # second pays for the first (no-hash raw once came out slower than raw with it).
        os.sync()
        if roots:
            with PeakSampler(roots) as sampler:
                outcome = run()
        else:
            sampler, outcome = None, run()
        if alive is not None and not alive():
            outcome.status, outcome.detail = "crashed", (outcome.detail + " server died").strip()
        row = {
            "size": report.size_label(size), "size_bytes": size, "method": method,
            "server": server, "repeat": repeat, "status": outcome.status,
            "seconds": round(outcome.seconds, 4),
            "mbps": round(size / outcome.seconds / 1e6, 1) if outcome.status == "ok" else None,
            "detail": outcome.detail,
        }
        if sampler is not None:
            row |= {
                "idle_kib": sampler.idle.total_kib, "peak_kib": sampler.peak_total_kib,
                "growth_kib": sampler.peak_total_kib - sampler.idle.total_kib,
                "idle_master_kib": sampler.idle.master_kib,
                "idle_workers_kib": sampler.idle.workers_kib,
                "peak_master_kib": sampler.peak.master_kib,
                "peak_workers_kib": sampler.peak.workers_kib, "samples": sampler.samples,
            }
        self.rows.append(row)
        shown = f"{row['mbps']} MB/s" if row["mbps"] else outcome.detail[:120]
        growth = f", RSS +{row['growth_kib'] / 1024:.1f} MiB" if sampler else ""
        log(f"{row['size']:>5} #{repeat} {method:<14} {server:<16} {outcome.status:<8} "
            f"{outcome.seconds:7.2f} s  {shown}{growth}")
        return outcome

    def on(self, target: Target, size: int, repeat: int, method: str, run):
        if not target.alive() and not self.revive(target):
            return self.measure(size, repeat, method, target.name, None, None,
                                lambda: transfers.Outcome("crashed", 0, "would not restart"))
        outcome = self.measure(size, repeat, method, target.name, target.roots(), target.alive,
                               run)
        if not target.alive():
            self.revive(target)
        return outcome

    def revive(self, target: Target) -> bool:
        try:
            self.fleet.revive(target)
            return True
        except RuntimeError as error:  # it will not come back: its cells say so, the run goes on
            log(f"{target.name} would not restart: {str(error)[-300:]}")
            return False

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> None:
        files = self.workdir / "files"
        files.mkdir(exist_ok=True)
        for size in self.args.sizes:
            path = files / f"bench-{report.size_label(size)}.bin"
            log(f"writing {path.name}")
            sha = make_file(path, size)
            for repeat in range(1, self.args.repeats + 1):
                self.references(path, size, repeat)
                for kind in rotated(self.args.servers, repeat):
                    if kind in self.fleet.targets:
                        self.server_cells(self.fleet.targets[kind], path, size, sha, repeat)
                self.extra_cells(path, size, sha, repeat)
            path.unlink()

    def references(self, path: Path, size: int, repeat: int) -> None:
        if self.args.no_references:
            return
        self.measure(size, repeat, "disk copy", "cp", None, None,
                     lambda: transfers.disk_copy(path, self.scratch))
        self.measure(size, repeat, "sha256", "hashlib", None, None,
                     lambda: transfers.hashlib_rate(path))
        if self.nginx:
            nginx = self.nginx
            if "raw" in self.args.methods:
                self.measure(size, repeat, "body to file", "nginx", nginx.roots(), nginx.alive,
                             lambda: transfers.nginx_body(nginx.url, path, size, self.scratch))
            if "download" in self.args.methods:
                self.measure(size, repeat, "download", "nginx", nginx.roots(), nginx.alive,
                             lambda: transfers.download(f"{nginx.url}/static/{path.name}", size,
                                                        self.scratch))

    def server_cells(self, target: Target, path: Path, size: int, sha: str, repeat: int):
        methods = self.args.methods
        stored = None
        if "raw" in methods or "download" in methods:
            outcome = self.on(target, size, repeat, "raw", lambda: transfers.upload(
                "raw", target.url, path, size, sha, self.scratch))
            stored = outcome.file_id if outcome.status == "ok" else None
        if "download" in methods:
            if stored is None:
                self.measure(size, repeat, "download", target.name, None, None,
                             lambda: transfers.Outcome("failed", 0, "no stored file to fetch"))
            else:
                self.on(target, size, repeat, "download", lambda: transfers.download(
                    f"{target.url}/files/{stored}/content", size, self.scratch))
        # every stored file goes at once: gigabytes left in the page cache make the
        # next cells' writes slower (fresh pages cost more than freed ones on this VM)
        transfers.delete(target.url, stored)
        for method in ("multipart", "files"):
            if method in methods:
                outcome = self.on(target, size, repeat, method, lambda: transfers.upload(
                    method, target.url, path, size, sha, self.scratch))
                transfers.delete(target.url, outcome.file_id)

    def extra_cells(self, path: Path, size: int, sha: str, repeat: int) -> None:
        if self.args.ops_overhead:
            ops_overhead.cells(self, path, size, sha, repeat)
        if "tus" in self.args.methods:
            tus.cells(self, path, size, sha, repeat)
        if not self.args.no_references:
            peers.cells(self, path, size, sha, repeat)
        nohash = self.fleet.targets.get("gunicorn-nohash")
        if nohash is not None:
            outcome = self.on(nohash, size, repeat, "raw (no hash)", lambda: transfers.upload(
                "raw", nohash.url, path, size, sha, self.scratch, verify_hash=False))
            transfers.delete(nohash.url, outcome.file_id)
        if "proxy" not in self.args.methods:
            return
        if not self.proxy_ok:
            for kind in self.args.proxy_servers:
                self.measure(size, repeat, "proxy", f"{kind}-proxy", None, None,
                             lambda: transfers.Outcome("unavailable", 0, "route missing"))
            return
        for kind in self.args.proxy_servers:
            front = self.fleet.targets[f"{kind}-proxy"]
            route = self.args.proxy_route.format(name=path.name)
            outcome = self.on(front, size, repeat, "proxy", lambda: transfers.proxied_upload(
                front.url, route, path, size, sha, self.scratch))
            transfers.delete(front.backend.url, outcome.file_id)


def rotated(items: list, repeat: int) -> list:
    """``items`` starting one further along each repeat, so no server always goes first."""
    shift = (repeat - 1) % len(items) if items else 0
    return items[shift:] + items[:shift]


def main(argv: list[str] | None = None) -> int:
    if "--listing" in (sys.argv[1:] if argv is None else argv):
        from . import listing

        return listing.main(argv)
    if "--storage" in (sys.argv[1:] if argv is None else argv):
        from . import s3

        return s3.main(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not transfers.curl_available():
        print("the benchmark needs curl", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "benchmark" / "results" / stamp
    workdir = Path(tempfile.mkdtemp(prefix="spillway-bench-", dir=args.workdir))
    runner = Runner(args, workdir)
    started = time.time()
    # SIGTERM (timeout, kill) as Ctrl-C: the servers, each in its own session, are stopped
    # and what was measured is written, instead of the servers outliving the run
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        runner.start()
        runner.run()
    except KeyboardInterrupt:
        runner.notes.append("interrupted: partial results")
        log("interrupted; writing what was measured")
    finally:
        runner.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.ops_overhead:
        runner.notes.append(ops_overhead.summary(runner.rows))
        log(runner.notes[-1])
    meta = {"started": stamp, "seconds": round(time.time() - started, 1),
            "sizes": [report.size_label(s) for s in args.sizes], "repeats": args.repeats,
            "workers": args.workers, "command": " ".join(["python -m benchmark", *sys.argv[1:]]),
            "notes": runner.notes}
    report.write(out, runner.rows, meta)
    if args.out is None:
        latest = out.parent / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    log(f"results in {out} ({meta['seconds']} s)")
    print((out / "results.md").read_text())
    return 0
