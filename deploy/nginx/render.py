"""Fill in a Spillway nginx template: ``python -m deploy.nginx.render MODE [options]``.

MODE is ``proxy`` (proxy_pass to gunicorn), ``uwsgi`` (uwsgi_pass to
``uwsgi --ini uwsgi.ini:behind-nginx``) or ``offload`` (direct upload).  Defaults come
from the same ``SPILLWAY_*`` variables the server reads, so one environment configures
both sides.  The config goes to stdout (or ``--output``); the settings Spillway needs
to match it go to stderr.  Directories nginx needs before it starts are created.

Templates use ``${NAME}`` placeholders (upper case) so ``envsubst`` works as well, as
long as it is told which names to replace: nginx's own ``$variables`` must stay.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = {"proxy": "proxy.conf.template", "uwsgi": "uwsgi.conf.template",
         "offload": "offload.conf.template"}
X_ACCEL_PREFIX = "/_spillway_blobs/"  # the internal location in every template
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class RenderError(ValueError):
    pass


def render_text(template: str, values: dict[str, str]) -> str:
    """Replace every ``${NAME}``; a name without a value is an error, never left in."""
    missing = sorted({name for name in _PLACEHOLDER.findall(template) if name not in values})
    if missing:
        raise RenderError("no value for " + ", ".join(missing))
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


def user_directive() -> str:
    """Run the workers as ourselves when started as root, so they and Spillway share files
    (nginx's default would be nobody); a non-root nginx cannot switch users at all."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"


def resolve_values(environ=os.environ, **given: str | None) -> dict[str, str]:
    """Every placeholder's value: ``given`` (``PREFIX=...``) over the SPILLWAY_* defaults."""
    from app.settings import Settings  # the server's own parsing of sizes and defaults

    settings = Settings.from_env(environ)
    values = {
        "USER_DIRECTIVE": user_directive(),
        "PREFIX": "nginx-run",
        "LISTEN": "127.0.0.1:8080",
        "BACKEND": environ.get("SPILLWAY_BIND", "127.0.0.1:8000"),
        "STORAGE_DIR": settings.storage_dir,
        "MAX_BODY": str(settings.max_request_size),
        "UPLOAD_TEMP_DIR": settings.nginx_temp_dir or None,
    }
    values.update({key: str(value) for key, value in given.items() if value is not None})
    for key in ("PREFIX", "STORAGE_DIR"):
        values[key] = os.path.abspath(values[key])
    # inside the storage dir by default: the same filesystem, so adopting is a rename
    values["UPLOAD_TEMP_DIR"] = os.path.abspath(
        values["UPLOAD_TEMP_DIR"] or os.path.join(values["STORAGE_DIR"], "nginx-body"))
    return values


def render(mode: str, values: dict[str, str]) -> str:
    return render_text((HERE / MODES[mode]).read_text(), values)


def prepare_directories(values: dict[str, str], mode: str) -> None:
    """nginx creates only the last component of a temp path; make the rest."""
    os.makedirs(os.path.join(values["PREFIX"], "tmp"), exist_ok=True)
    if mode == "offload":
        os.makedirs(os.path.dirname(values["UPLOAD_TEMP_DIR"].rstrip("/")), exist_ok=True)


def app_settings(mode: str, values: dict[str, str]) -> dict[str, str]:
    """The SPILLWAY_* settings that go with a rendered config."""
    wanted = {"SPILLWAY_STORAGE_DIR": values["STORAGE_DIR"], "SPILLWAY_BIND": values["BACKEND"],
              "SPILLWAY_X_ACCEL_PREFIX": X_ACCEL_PREFIX}
    if mode == "offload":
        wanted["SPILLWAY_NGINX_TEMP_DIR"] = values["UPLOAD_TEMP_DIR"]
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.nginx.render",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--listen", help="address nginx listens on (default 127.0.0.1:8080)")
    parser.add_argument("--backend", help="Spillway's host:port or unix:/path "
                                          "(default $SPILLWAY_BIND or 127.0.0.1:8000)")
    parser.add_argument("--prefix", help="nginx's own dir: pid, logs, temp dirs "
                                         "(default ./nginx-run)")
    parser.add_argument("--storage-dir", help="default $SPILLWAY_STORAGE_DIR")
    parser.add_argument("--max-body", help="client_max_body_size "
                                           "(default $SPILLWAY_MAX_REQUEST_SIZE in bytes)")
    parser.add_argument("--upload-temp-dir", help="offload: where nginx writes bodies "
                                                  "(default $SPILLWAY_NGINX_TEMP_DIR or "
                                                  "<storage-dir>/nginx-body)")
    parser.add_argument("--user-directive", help='e.g. "user www-data;" (default: the '
                                                 'current user when run as root, else none)')
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)

    values = resolve_values(**{key.upper(): getattr(args, key) for key in (
        "listen", "backend", "prefix", "storage_dir", "max_body", "upload_temp_dir",
        "user_directive")})
    text = render(args.mode, values)
    prepare_directories(values, args.mode)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    print("# run Spillway with:", file=sys.stderr)
    for key, value in app_settings(args.mode, values).items():
        print(f"export {key}={value}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
