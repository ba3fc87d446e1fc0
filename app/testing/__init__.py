"""Starting real servers (gunicorn, uWSGI, nginx) on loopback: shared by tests/ and benchmark/.

Development only: .dockerignore keeps it out of the image (it imports deploy/'s nginx
renderer, which the image does not ship), and no module of the server imports it.
"""
