"""Starting real servers (gunicorn, uWSGI, nginx) on loopback: shared by tests/ and benchmark/.

Not part of the app (the image ships app/ only, and every import there must be a pinned
requirement); nothing under app/ imports it.
"""
