"""gunicorn settings for long, large transfers (``gunicorn -c gunicorn.conf.py wsgi:app``).

Every value can be overridden from the environment: ``SPILLWAY_BIND`` and the
``GUNICORN_*`` variables below.
"""

import os

from app.core import metrics_files

# prometheus_client's multiprocess directory: set before any worker imports the client,
# emptied once per start (PROMETHEUS_MULTIPROC_DIR if given, else a new temp directory)
if os.environ.get("SPILLWAY_METRICS", "true").lower() not in ("0", "false", "no", "off"):
    metrics_files.prepare_launch(os.getpid())

bind = os.environ.get("SPILLWAY_BIND", "127.0.0.1:8000")

# gthread: a thread streams one body while the worker's main loop keeps sending
# heartbeats, so `timeout` does not kill a worker in the middle of a 2 GB upload
# (a sync worker would be).
# app/web/servers/gunicorn_worker.py: gthread plus a whole-head deadline (SPILLWAY_HEAD_TIMEOUT)
worker_class = "app.web.servers.gunicorn_worker.HeadDeadlineWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))

timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# uploads in flight get this long to finish after SIGTERM
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "300"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))

# downloads go out through wsgi.file_wrapper -> sendfile(2)
sendfile = True

# empty: no access log; none by default with SPILLWAY_LOG_FORMAT=json, which logs each
# request as one JSON line itself
_json_logs = os.environ.get("SPILLWAY_LOG_FORMAT") == "json"
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "" if _json_logs else "-") or None
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")

# gunicorn >= 25 opens a control socket at one fixed path per user ($HOME/.gunicorn/
# gunicorn.ctl), so a second instance on the same machine takes it over and stopping
# either removes it.  Off unless a path is given.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def pre_request(worker, req):
    # runs before gunicorn builds the environ: the app takes over gunicorn's "100 Continue"
    # (said only once auth and the size check passed) and can close a connection whose
    # body it refused unread (app/web/servers/)
    from app.web.servers.gunicorn import remember_gunicorn_request

    remember_gunicorn_request(req)


def child_exit(server, worker):
    # a worker that exited (or was killed): its live gauges go, its counters are folded
    # into the archive files (app/core/metrics_files.py)
    metrics_files.worker_exited(worker.pid)
