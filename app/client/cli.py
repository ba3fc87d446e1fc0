"""`python -m app.client`: argument parsing, JSON lines on stdout, one-line errors on stderr."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys

from . import errors
from .api import METHODS, SpillwayClient
from .progress import for_terminal

COMMANDS = ("upload", "download", "list", "info", "delete")


def build_parser() -> argparse.ArgumentParser:
    # the global options are accepted before or after the command (default SUPPRESS in the
    # copies, so a subcommand's unset option does not overwrite one given before it)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="python -m app.client", description="Upload to and download from a Spillway server.",
        epilog=errors.EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("upload", parents=[common], help="upload files (streamed from disk)",
                             epilog=errors.EXIT_CODES_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("files", nargs="+", metavar="FILE")
    up.add_argument("--method", choices=METHODS, default="stream",
                    help="stream: PUT raw body (default); multipart: POST /upload form; "
                         "files: POST /upload-baseline (request.files)")
    up.add_argument("--name", help="stored filename (one FILE only; default: its basename)")
    up.add_argument("--digest", action="store_true",
                    help="hash the file first and let the server check it too (one more read)")
    up.add_argument("--resumable", action="store_true",
                    help="upload over tus (/tus/); run the same command again after an "
                         "interrupt or crash to continue where the server stopped")
    up.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="with --resumable: N partial uploads at once, then joined "
                         "(tus concatenation; default 1)")
    up.add_argument("--chunk-size", type=parse_size, default=0, metavar="SIZE",
                    help="with --resumable: bytes per PATCH, e.g. 64M (default: one PATCH)")
    up.add_argument("--state-dir", metavar="DIR",
                    help="with --resumable: where unfinished uploads are remembered "
                         "(default ~/.cache/spillway/tus)")

    down = commands.add_parser("download", parents=[common], help="download a file (resumable)",
                               epilog=errors.EXIT_CODES_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    down.add_argument("id")
    down.add_argument("-o", "--output", metavar="FILE",
                      help="where to write (default: the stored filename, in this directory)")
    down.add_argument("--no-resume", action="store_true",
                      help="start over even if FILE.part is there")

    listing = commands.add_parser("list", parents=[common], help="list files (one JSON line each)")
    listing.add_argument("--all", action="store_true", help="follow the cursor through every page")
    listing.add_argument("--limit", type=int, help="page size")
    listing.add_argument("--after", help="cursor: list files after this id")

    for name, text in (("info", "one file's metadata"), ("delete", "delete a file")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("id")
    return parser


def _global_options(parser: argparse.ArgumentParser, default) -> None:
    def d(value):
        return value if default is None else default

    parser.add_argument("--url", default=d(os.environ.get("SPILLWAY_URL",
                                                          "http://127.0.0.1:8000")),
                        help="server URL (env SPILLWAY_URL, default http://127.0.0.1:8000)")
    parser.add_argument("--token", default=d(os.environ.get("SPILLWAY_TOKEN")),
                        help="bearer token (env SPILLWAY_TOKEN)")
    parser.add_argument("-q", "--quiet", action="store_true", default=d(False),
                        help="no progress bar")
    parser.add_argument("--profile", nargs="?", const="-", default=d(None), metavar="FILE",
                        help="profile the client (cProfile, sorted by cumulative time) to FILE "
                             "or stderr; before the command write --profile=FILE")
    parser.add_argument("--timeout", type=float, default=d(60.0),
                        help="seconds to wait for connect/each read (default 60)")
    parser.add_argument("--retries", type=int, default=d(3),
                        help="retries of idempotent steps on network/5xx errors (default 3)")
    parser.add_argument("--backoff", type=float, default=d(0.5),
                        help="first retry delay in seconds, doubled each time (default 0.5)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_profile_before_command(sys.argv[1:] if argv is None
                                                             else argv))
    if args.command == "upload" and args.name and len(args.files) > 1:
        return _fail(errors.UsageError("--name works with one FILE only", code="usage"))
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    try:
        return run(args)
    except KeyboardInterrupt:
        print("spillway: interrupted (a download's .part and a --resumable upload's state "
              "are kept: run the same command again to resume)", file=sys.stderr)
        return 130
    finally:
        if profiler:
            profiler.disable()
            _write_profile(profiler, args.profile)


def _profile_before_command(argv: list[str]) -> list[str]:
    """`--profile upload f` means "profile to stderr", not "profile to a file named upload"."""
    argv = list(argv)
    for i, word in enumerate(argv[:-1]):
        if word == "--profile" and argv[i + 1] in COMMANDS:
            argv[i] = "--profile=-"
    return argv


def run(args: argparse.Namespace) -> int:
    client = SpillwayClient(args.url, token=args.token, timeout=args.timeout,
                            retries=args.retries, backoff=args.backoff,
                            progress=for_terminal(args.quiet))
    try:
        if args.command == "upload":
            return _upload(client, args)
        if args.command == "download":
            _emit(client.download(args.id, args.output, resume=not args.no_resume))
        elif args.command == "list":
            files = client.iter_files(args.limit) if args.all \
                else client.list_page(args.limit, args.after)["files"]
            for record in files:
                _emit(record)
        elif args.command == "info":
            _emit(client.info(args.id))
        elif args.command == "delete":
            client.delete(args.id)
            _emit({"id": args.id, "deleted": True})
    except errors.ClientError as error:
        return _fail(error)
    except OSError as error:  # local disk trouble: -o in a missing directory, disk full, …
        return _fail(errors.ClientError(str(error), code="local_error"))
    return errors.OK


def _upload(client: SpillwayClient, args: argparse.Namespace) -> int:
    """Every FILE is tried; the exit code is the first failure's."""
    status = errors.OK
    for path in args.files:
        try:
            if args.resumable:
                _emit(client.upload_resumable(path, name=args.name, parallel=args.parallel,
                                              chunk_size=args.chunk_size,
                                              state_dir=args.state_dir))
            else:
                _emit(client.upload(path, method=args.method, name=args.name,
                                    digest=args.digest))
        except errors.ClientError as error:
            error.subject = path
            status = status or _fail(error)
    return status


def parse_size(text: str) -> int:
    """``67108864``, ``64M``, ``1G`` (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _fail(error: errors.ClientError) -> int:
    print(f"spillway: {error}", file=sys.stderr)
    return error.exit_code


def _write_profile(profiler: cProfile.Profile, target: str) -> None:
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(40)
    if target == "-":
        sys.stderr.write(text.getvalue())
    else:
        with open(target, "w") as out:
            out.write(text.getvalue())
