"""Client errors and the exit codes they map to (one place, shared by API and CLI)."""

from __future__ import annotations

OK = 0
OTHER = 1
USAGE = 2
AUTH = 3
NOT_FOUND = 4
TOO_LARGE = 5
INTEGRITY = 6
NETWORK = 7

EXIT_CODES_HELP = """exit codes:
  0  success
  1  any other error (e.g. a 400/409/416 answer)
  2  usage error (bad arguments, unreadable local file)
  3  authentication/authorisation refused (401/403)
  4  not found (404)
  5  too large (413)
  6  integrity mismatch (SHA-256 differs between client and server)
  7  network or server error (connection failed, timeout, 5xx) after retries"""


class ClientError(Exception):
    """Something the user must hear about: a one-line message and an exit code."""

    exit_code = OTHER

    def __init__(self, message: str, code: str = "error", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.subject = ""  # e.g. the file an upload error is about

    def __str__(self) -> str:
        subject = f"{self.subject}: " if self.subject else ""
        status = f"{self.status} " if self.status else ""
        return f"{subject}{status}{self.code}: {self.message}"


class UsageError(ClientError):
    exit_code = USAGE


class AuthError(ClientError):
    exit_code = AUTH


class NotFoundError(ClientError):
    exit_code = NOT_FOUND


class TooLargeError(ClientError):
    exit_code = TOO_LARGE


class IntegrityError(ClientError):
    exit_code = INTEGRITY


class NetworkError(ClientError):
    exit_code = NETWORK


def from_response(response) -> ClientError:
    """The ClientError for a non-2xx answer, using the server's JSON error when it sent one."""
    status = response.status_code
    code, message = f"http_{status}", response.reason or "error"
    try:
        error = response.json().get("error", {})
        code, message = error.get("code", code), error.get("message", message)
    except (ValueError, AttributeError):
        pass
    if status in (401, 403):
        kind = AuthError
    elif status == 404:
        kind = NotFoundError
    elif status == 413:
        kind = TooLargeError
    elif code == "digest_mismatch":
        kind = IntegrityError
    elif status >= 500:
        kind = NetworkError
    else:
        kind = ClientError
    return kind(message, code=code, status=status)
