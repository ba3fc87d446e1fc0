"""``flask --app wsgi spillway sweep``: the cleanup, once, for cron; prints its report."""

from __future__ import annotations

import json

import click
from flask import Flask
from flask.cli import AppGroup

from ..core.sweep import sweep

spillway_cli = AppGroup("spillway", help="Spillway operations.")


@spillway_cli.command("sweep")
@click.option("--stale-after", type=float, default=24 * 3600.0, show_default=True,
              help="seconds before bytes without a record count as left behind")
def sweep_command(stale_after: float) -> None:
    """Remove expired uploads and what crashed workers left; redeliver spooled hooks."""
    from flask import current_app

    services = current_app.extensions["spillway"]
    report = sweep(services["storage"], services.get("hooks"), stale_after=stale_after)
    click.echo(json.dumps(report))


def register(app: Flask) -> None:
    app.cli.add_command(spillway_cli)
