"""results.md / .csv / .json, machine.txt and the plots; the ratios and the goals (MET/MISSED)."""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from app.testing.nginx import nginx_binary
from app.testing.servers import BIN

SERVERS = ["flask", "gunicorn", "uwsgi", "uwsgi-router"]  # the Spillway deployments measured
PRODUCTION = ["gunicorn", "uwsgi", "uwsgi-router"]  # goals are judged on deployable servers
SPILLWAY_METHODS = ["raw", "multipart", "proxy", "download", "tus", "tus 64M"]
PEERS = ("copyparty", "uploadserver")  # what a user would pick instead for plain uploads
REFERENCE_SERVERS = ("nginx", "@tus/server") + PEERS  # rows of other software, not Spillway's
TUS_SERVERS = ("gunicorn", "uwsgi")
MB = 1e6
FIELDS = ["size", "size_bytes", "method", "server", "repeat", "status", "seconds", "mbps",
          "idle_kib", "peak_kib", "growth_kib", "idle_master_kib", "idle_workers_kib",
          "peak_master_kib", "peak_workers_kib", "samples", "detail"]


def size_label(size: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# --- aggregation --------------------------------------------------------------------------------

def cells(rows: list[dict]) -> list[dict]:
    """One line per (size, method, server): median/min/max time of the ok runs, worst RSS."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["size_bytes"], row["method"], row["server"])].append(row)
    table = []
    for (size, method, server), runs in groups.items():
        ok = [r["seconds"] for r in runs if r["status"] == "ok"]
        bad = [r for r in runs if r["status"] != "ok"]
        status = "ok" if not bad else (
            bad[0]["status"] if len(bad) == len(runs) else f"{bad[0]['status']} {len(bad)}/{len(runs)}")
        sampled = [r for r in runs if r.get("peak_kib") is not None]
        table.append({
            "size": size_label(size), "size_bytes": size, "method": method, "server": server,
            "runs": len(runs), "status": status,
            "detail": "; ".join(sorted({r["detail"] for r in bad if r["detail"]}))[:200],
            "median_s": statistics.median(ok) if ok else None,
            "min_s": min(ok) if ok else None, "max_s": max(ok) if ok else None,
            "mbps": size / statistics.median(ok) / MB if ok else None,
            "idle_kib": min((r["idle_kib"] for r in sampled), default=None),
            "peak_kib": max((r["peak_kib"] for r in sampled), default=None),
            "growth_kib": max((r["growth_kib"] for r in sampled), default=None),
        })
    order = {m: i for i, m in enumerate(
        ["disk copy", "sha256", "body to file", "raw", "raw (no hash)", "multipart", "files",
         "proxy", "download", "tus", "tus 64M"])}
    table.sort(key=lambda c: (c["size_bytes"], order.get(c["method"], 99), c["server"]))
    return table


def _times(rows: list[dict]) -> dict:
    """(size, repeat, method, server) -> seconds, ok runs only."""
    return {(r["size_bytes"], r["repeat"], r["method"], r["server"]): r["seconds"]
            for r in rows if r["status"] == "ok"}


def ratio_specs(servers: list[str]) -> list[tuple[str, str, tuple, tuple, float | None, str]]:
    """(name, server, numerator-key, denominator-key, goal, sense): ratio = time(den)/time(num)
    for throughput ratios, or time(num)/time(den) for the 'x slower' one.

    Keys are (method, server); the goal is a minimum on the ratio, None when informational.
    """
    specs = []
    for s in servers:
        goal_server = s in PRODUCTION
        specs += [
            ("files ÷ multipart (time, ≥2)", s, ("files", s), ("multipart", s), 2.0, "time"),
            ("multipart ÷ raw (throughput, ≥0.85)", s, ("multipart", s), ("raw", s),
             0.85 if goal_server else None, "rate"),
            ("raw ÷ nginx body-to-file (throughput, ≥0.9)", s, ("raw", s),
             ("body to file", "nginx"), 0.9 if goal_server else None, "rate"),
            ("download ÷ nginx sendfile (throughput)", s, ("download", s), ("download", "nginx"),
             None, "rate"),
            ("proxy ÷ direct raw (throughput)", s, ("proxy", f"{s}-proxy"), ("raw", s), None,
             "rate"),
        ]
    for s in servers:
        if s not in PRODUCTION:
            continue
        for method, peer in (("raw", "copyparty"), ("multipart", "copyparty"),
                             ("multipart", "uploadserver"), ("download", "copyparty"),
                             ("download", "uploadserver")):
            specs.append((f"{method} ÷ {peer} {method} (throughput, ≥1)", s, (method, s),
                          (method, peer), 1.0, "rate"))
    for s in TUS_SERVERS:
        if s not in servers:
            continue
        for method in ("tus", "tus 64M"):
            specs += [
                (f"{method} ÷ raw (throughput, ≥0.9)", s, (method, s), ("raw", s), 0.9, "rate"),
                (f"{method} ÷ @tus/server {method} (throughput, ≥1.5)", s, (method, s),
                 (method, "@tus/server"), 1.5, "rate"),
            ]
    for s in ("uwsgi", "uwsgi-router"):
        if s in servers and "gunicorn" in servers:
            specs += [
                (f"{s} ÷ gunicorn raw upload (throughput, ≥0.9)", s, ("raw", s),
                 ("raw", "gunicorn"), 0.9, "rate"),
                (f"{s} ÷ gunicorn download (throughput, ≥0.9)", s, ("download", s),
                 ("download", "gunicorn"), 0.9, "rate"),
            ]
    specs += [
        ("hashing kept (raw ÷ raw without hash, ≥0.9)", "gunicorn",
         ("raw", "gunicorn"), ("raw (no hash)", "gunicorn-nohash"), 0.9, "rate"),
        # why the two above can miss: SHA-256 of one stream cannot be split across cores, so
        # an upload can go no faster than one core hashes; these show how close it gets
        ("raw ÷ one-core SHA-256 (throughput)", "gunicorn", ("raw", "gunicorn"),
         ("sha256", "hashlib"), None, "rate"),
        ("raw without hash ÷ nginx body-to-file (throughput)", "gunicorn-nohash",
         ("raw (no hash)", "gunicorn-nohash"), ("body to file", "nginx"), None, "rate"),
    ]
    return specs


def ratios(rows: list[dict], servers: list[str]) -> list[dict]:
    """Each ratio per size: computed within each repeat (runs next to each other), then the
    median over the repeats, so a noisy neighbour slowing one repeat moves both sides."""
    times = _times(rows)
    sizes = sorted({r["size_bytes"] for r in rows})
    repeats = sorted({r["repeat"] for r in rows})
    result = []
    for name, server, num, den, goal, sense in ratio_specs(servers):
        for size in sizes:
            values = []
            for rep in repeats:
                a, b = times.get((size, rep, *num)), times.get((size, rep, *den))
                if a and b:
                    values.append(a / b if sense == "time" else b / a)
            if values:
                result.append({"ratio": name, "server": server, "size": size_label(size),
                               "size_bytes": size, "median": statistics.median(values),
                               "min": min(values), "max": max(values), "n": len(values),
                               "goal": goal})
    return result


def goals(rows: list[dict], table: list[dict], ratio_rows: list[dict]) -> list[str]:
    """Every goal of issues 4 and 6 as a MET / MISSED / NOT MEASURED line with its figure."""
    lines = []
    if not rows:
        return ["NOT MEASURED: nothing ran"]
    largest = max(r["size_bytes"] for r in rows)
    big = size_label(largest)
    ours = [c for c in table if c["method"] in SPILLWAY_METHODS
            and c["server"] not in REFERENCE_SERVERS]
    at_largest = [c for c in ours if c["size_bytes"] == largest]
    missing = [c for c in at_largest if c["status"] == "unavailable"]
    at_largest = [c for c in at_largest if c["status"] != "unavailable"]
    unfinished = [f"{c['method']}/{c['server']}: {c['status']}" for c in at_largest
                  if c["status"] != "ok"]
    lines.append(_verdict(not unfinished and bool(at_largest),
                          f"every Spillway path finishes {big}",
                          "; ".join(unfinished) or f"{len(at_largest)} cells ok"))
    for c in missing:
        lines.append(f"NOT MEASURED: {c['method']}/{c['server']}: {c['detail'] or 'unavailable'}")
    sampled = [c for c in table if c["growth_kib"] is not None
               and c["method"] in SPILLWAY_METHODS + ["raw (no hash)"]
               and c["server"] not in REFERENCE_SERVERS]
    if sampled:
        lines.append(_rss_verdict(sampled, "server peak RSS within 30 MB of idle "
                                           "(every Spillway cell, all sizes)"))
    lines += _tus_goals(table)
    baseline = [c for c in table if c["method"] == "files" and c["growth_kib"] is not None]
    if baseline:
        worst = max(baseline, key=lambda c: c["growth_kib"])
        lines.append(f"REPORTED: request.files baseline worst RSS growth "
                     f"+{worst['growth_kib'] / 1024:.1f} MiB ({worst['server']} {worst['size']})")
    for r in ratio_rows:
        if r["goal"] is None or r["size_bytes"] != largest:
            continue
        lines.append(_verdict(r["median"] >= r["goal"], f"{r['ratio']} — {r['server']} at {big}",
                              f"{r['median']:.2f} (min {r['min']:.2f}, max {r['max']:.2f}, "
                              f"n={r['n']})"))
    return lines


def _tus_goals(table: list[dict]) -> list[str]:
    """The tus method's own RSS line, and why the @tus/server ratios are absent if they are."""
    ours = [c for c in table if c["method"].startswith("tus") and c["growth_kib"] is not None
            and c["server"] not in REFERENCE_SERVERS]
    lines = []
    if ours:
        lines.append(_rss_verdict(ours, "tus: server peak RSS within 30 MB of idle"))
    reference = [c for c in table if c["server"] == "@tus/server"]
    if reference and not any(c["status"] == "ok" for c in reference):
        lines.append(f"NOT MEASURED: tus ÷ @tus/server: {reference[0]['detail'] or 'unavailable'}")
    return lines


def _rss_verdict(cells: list[dict], what: str) -> str:
    """The 30 MB memory goal over ``cells``, judged on the worst growth among them."""
    worst = max(cells, key=lambda c: c["growth_kib"])
    return _verdict(worst["growth_kib"] <= 30 * 1024, what,
                    f"worst +{worst['growth_kib'] / 1024:.1f} MiB "
                    f"({worst['method']}/{worst['server']} {worst['size']})")


def _verdict(ok: bool, what: str, figure: str) -> str:
    return f"{'MET' if ok else 'MISSED'}: {what}: {figure}"


# --- output -------------------------------------------------------------------------------------

def _fmt(value, pattern="{:.2f}") -> str:
    return "" if value is None else pattern.format(value)


def markdown(table: list[dict], ratio_rows: list[dict], goal_lines: list[str], meta: dict) -> str:
    out = [f"# Spillway benchmark {meta['started']}", "",
           f"`{meta['command']}` — sizes {', '.join(meta['sizes'])}, {meta['repeats']} run(s) "
           f"per cell, {meta['workers']} worker process(es) per server, "
           f"{meta['seconds']} s in all. Machine: machine.txt.", ""]
    for note in meta["notes"]:
        out.append(f"- {note}")
    out += ["", "## Goals", ""] + [f"- {line}" for line in goal_lines]
    out += ["", "## Transfers", "",
            "Time: median of the ok runs (min–max). MB/s: 10^6 bytes/s at the median. RSS: "
            "the server's whole process tree (master + workers, and both Spillways for proxy), "
            "idle before the transfer, peak sampled every 20 ms during it, growth = peak − idle "
            "(worst run).", "",
            "| Size | Method | Server | Time (s) | Min–max (s) | MB/s | Idle RSS (MiB) | "
            "Peak RSS (MiB) | Growth (MiB) | Status |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in table:
        mib = lambda k: _fmt(c[k] / 1024 if c[k] is not None else None, "{:.1f}")  # noqa: E731
        status = c["status"] + (f" ({c['detail']})" if c["detail"] else "")
        out.append(f"| {c['size']} | {c['method']} | {c['server']} | {_fmt(c['median_s'])} | "
                   f"{_fmt(c['min_s'])}–{_fmt(c['max_s'])} | {_fmt(c['mbps'], '{:.0f}')} | "
                   f"{mib('idle_kib')} | {mib('peak_kib')} | {mib('growth_kib')} | {status} |")
    out += ["", "## Ratios (within each run, then the median over runs)", "",
            "| Ratio | Server | Size | Median | Min | Max | Goal |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in ratio_rows:
        out.append(f"| {r['ratio']} | {r['server']} | {r['size']} | {r['median']:.2f} | "
                   f"{r['min']:.2f} | {r['max']:.2f} | {_fmt(r['goal'])} |")
    return "\n".join(out) + "\n"


def machine() -> str:
    def run(*command: str) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem = next(line.split(":", 1)[1].strip() for line in
               Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    disk = shutil.disk_usage(os.environ.get("TMPDIR", "/tmp"))
    from importlib import metadata

    versions = []
    for name in ("flask", "werkzeug", "gunicorn", "pyuwsgi", "streaming-form-data", "requests",
                 "matplotlib"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    return "\n".join([
        f"cpu: {cpu}", f"cores: {os.cpu_count()}", f"memory: {mem}",
        f"temp disk free: {disk.free / 2**30:.1f} GiB of {disk.total / 2**30:.1f} GiB",
        f"kernel: {platform.system()} {platform.release()}",
        f"python: {sys.version.split()[0]}", f"packages: {', '.join(versions)}",
        f"uwsgi: {run(str(BIN / 'uwsgi'), '--version')}",
        f"nginx: {run(nginx_binary() or 'nginx', '-v')}", f"curl: {run('curl', '--version')}", ""])


PANELS = ["raw", "multipart", "files", "proxy", "download", "tus", "tus 64M"]
COLORS = {"flask": "tab:gray", "gunicorn": "tab:green", "uwsgi": "tab:blue",
          "uwsgi-router": "tab:purple", "gunicorn-proxy": "tab:green", "uwsgi-proxy": "tab:blue",
          "gunicorn-nohash": "tab:olive", "nginx": "black", "cp": "tab:orange",
          "hashlib": "tab:red", "@tus/server": "tab:brown", "copyparty": "tab:pink",
          "uploadserver": "tab:cyan"}
# reference lines drawn (dashed) in each panel of the throughput plot
REFERENCES = {"upload": [("body to file", "nginx"), ("disk copy", "cp"), ("sha256", "hashlib")],
              "download": [("download", "nginx"), ("disk copy", "cp")]}


def plots(out: Path, table: list[dict]) -> None:
    """One panel per method, one colour per server; references dashed where they apply."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in table:
        by_cell[(c["method"], c["server"])].append(c)
    methods = [m for m in PANELS if any(k[0] == m and any(c["status"] != "unavailable"
                                                           for c in v)
                                        for k, v in by_cell.items())]
    for figure_name, key, ylabel in (("throughput.png", "mbps", "MB/s (median)"),
                                     ("peak_rss.png", "peak_kib", "peak RSS of the server (MiB)")):
        fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4.6),
                                 sharey=True, squeeze=False)
        for ax, method in zip(axes[0], methods):
            lines = [(k, "-") for k in by_cell if k[0] == method]
            if method == "raw":
                lines += [(k, "-") for k in by_cell if k[0] == "raw (no hash)"]
            if key == "mbps":
                refs = REFERENCES["download" if method == "download" else "upload"]
                lines += [(k, "--") for k in refs if k in by_cell]
            elif method == "download":
                lines += [(("download", "nginx"), "--")] if ("download", "nginx") in by_cell else []
            elif ("body to file", "nginx") in by_cell:
                lines.append((("body to file", "nginx"), "--"))
            lines = list(dict((k, style) for k, style in reversed(lines)).items())[::-1]
            for (m, server), style in lines:
                pts = [(c["size_bytes"] / 2**20, c[key] / (1024 if key == "peak_kib" else 1))
                       for c in sorted(by_cell[(m, server)], key=lambda c: c["size_bytes"])
                       if c[key] is not None]
                if pts:
                    label = server if m == method else f"{server} ({m})"
                    ax.plot(*zip(*pts), style, marker="o", color=COLORS.get(server),
                            label=label)
            ax.set_title(method)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("file size (MiB)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        axes[0][0].set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / figure_name, dpi=100)
        plt.close(fig)


def replot(results_dir: Path) -> None:
    """Redraw the plots of an earlier run from its results.json."""
    plots(results_dir, json.loads((results_dir / "results.json").read_text())["cells"])


def write(out: Path, rows: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = cells(rows)
    servers = [s for s in dict.fromkeys(r["server"] for r in rows) if s in SERVERS]
    ratio_rows = ratios(rows, servers)
    goal_lines = goals(rows, table, ratio_rows)
    (out / "results.md").write_text(markdown(table, ratio_rows, goal_lines, meta))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "samples": rows, "cells": table, "ratios": ratio_rows,
         "goals": goal_lines}, indent=1))
    (out / "machine.txt").write_text(machine())
    plots(out, table)
