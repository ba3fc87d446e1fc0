"""Plain Python: no Flask, no WSGI server. Reading bodies, the pump, multipart, digests, errors."""
