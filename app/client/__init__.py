"""Spillway's command-line and Python client (talks HTTP only; no server code imported)."""

from .api import METHODS, SpillwayClient
from .errors import (AuthError, ClientError, IntegrityError, NetworkError, NotFoundError,
                     TooLargeError, UsageError)

__all__ = ["SpillwayClient", "METHODS", "ClientError", "AuthError", "NotFoundError",
           "TooLargeError", "IntegrityError", "NetworkError", "UsageError"]
