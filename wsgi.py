"""WSGI entry point for gunicorn (``wsgi:app``) and uWSGI (``module = wsgi:app``)."""

import os

from app import create_app
from app.web.logs import configure_logging

configure_logging(os.environ.get("SPILLWAY_LOG_FORMAT", "text"))

app = create_app()
