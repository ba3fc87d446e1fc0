"""The Flask layer: the app factory, blueprints, responses, and the WSGI server glue."""
