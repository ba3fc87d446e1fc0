"""Blueprints: thin handlers that parse the request, call the core, and respond."""
