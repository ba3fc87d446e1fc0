"""nginx config templates for Spillway and their renderer (python -m deploy.nginx.render)."""
