"""Glue for the WSGI servers Spillway runs under (gunicorn, uWSGI)."""
