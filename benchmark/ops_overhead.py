"""``--ops-overhead``: what metrics and JSON request logs cost on the byte path.

Two gunicorn servers, identical but for the operations settings: "ops on" (metrics in
multiprocess mode, one JSON log line per request) and "ops off" (SPILLWAY_METRICS=false,
text logs).  Every repeat uploads the same raw file to both, back to back, in alternating
order; the summary is the median on/off ratio of MB/s with the spread of the ratios.
"""

from __future__ import annotations

import statistics

from . import transfers

ON, OFF = "gunicorn-ops-on", "gunicorn-ops-off"
ENVIRONMENTS = {
    ON: {"SPILLWAY_METRICS": "true", "SPILLWAY_LOG_FORMAT": "json"},
    OFF: {"SPILLWAY_METRICS": "false", "SPILLWAY_LOG_FORMAT": "text"},
}
METHOD = "raw (ops)"


def add_targets(fleet) -> None:
    for name, env in ENVIRONMENTS.items():
        fleet.add(name, "gunicorn", extra_env=env)


def cells(runner, path, size: int, sha: str, repeat: int) -> None:
    order = [ON, OFF] if repeat % 2 else [OFF, ON]
    for name in order:
        target = runner.fleet.targets[name]
        outcome = runner.on(target, size, repeat, METHOD, lambda: transfers.upload(
            "raw", target.url, path, size, sha, runner.scratch))
        transfers.delete(target.url, outcome.file_id)


def summary(rows: list[dict]) -> str:
    by_cell: dict[tuple, dict] = {}
    for row in rows:
        if row["method"] == METHOD and row["status"] == "ok":
            by_cell.setdefault((row["size"], row["repeat"]), {})[row["server"]] = row["mbps"]
    ratios = [cell[ON] / cell[OFF] for cell in by_cell.values() if ON in cell and OFF in cell]
    if not ratios:
        return "ops overhead: no complete pair measured"
    return (f"ops overhead (raw, metrics + JSON logs on / off, gunicorn): median ratio "
            f"{statistics.median(ratios):.3f} over {len(ratios)} pairs, range "
            f"{min(ratios):.3f}-{max(ratios):.3f}")
