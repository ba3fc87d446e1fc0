"""The Docker image without a Docker engine: hadolint on the Dockerfile, and the image's
CMD run here with the image's ENV (only the storage dir and the bind address changed)."""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import sha256_of
from app.testing.servers import BIN, ROOT, free_port, launch

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Image:
    """What the final stage of a Dockerfile says, in the few forms we use (anything else
    raises, so a change of form fails the tests instead of being misread)."""

    bases: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    user: str = "root"
    volumes: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuations joined."""
    found, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines inside a continuation too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        found.append((keyword.upper(), args.strip()))
        pending = ""
    if pending:
        raise ValueError("the Dockerfile ends inside a continued line")
    return found


def exec_form(args: str, what: str) -> list[str]:
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        argv = None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError(f"{what} must be in exec (JSON array) form: {args!r}")
    return argv


def parse_dockerfile(text: str) -> Image:
    image = Image()
    for keyword, args in instructions(text):
        if keyword == "FROM":
            base = args.split()[0]
            image = Image(bases=image.bases + [base])  # a new stage starts afresh
        elif keyword == "ENV":
            for item in shlex.split(args):
                key, equals, value = item.partition("=")
                if not equals or "$" in value:
                    raise ValueError(f"ENV must be KEY=VALUE without references: {item!r}")
                image.env[key] = value
        elif keyword == "WORKDIR":
            image.workdir = str(PurePosixPath(image.workdir) / args)
        elif keyword == "COPY":
            parts = shlex.split(args)
            if any(p.startswith("--from") for p in parts):
                continue  # from another stage, not from the build context
            if any(p.startswith("--") for p in parts):
                raise ValueError(f"unexpected COPY option: {args!r}")
            image.copies.append((parts[:-1], parts[-1]))
        elif keyword == "RUN":
            image.runs.append(args)
        elif keyword == "USER":
            image.user = args
        elif keyword == "VOLUME":
            image.volumes += exec_form(args, "VOLUME") if args.startswith("[") else args.split()
        elif keyword == "EXPOSE":
            image.exposed += args.split()
        elif keyword == "HEALTHCHECK":
            match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(\[.*\])", args)
            if not match:
                raise ValueError(f"HEALTHCHECK must be options then CMD [...]: {args!r}")
            image.healthcheck_options = dict(o[2:].split("=", 1) for o in match[1].split())
            image.healthcheck = exec_form(match[2], "HEALTHCHECK CMD")
        elif keyword == "CMD":
            image.cmd = exec_form(args, "CMD")
        elif keyword not in ("ARG", "LABEL", "STOPSIGNAL"):
            raise ValueError(f"instruction the tests do not understand: {keyword}")
    return image


@pytest.fixture(scope="module")
def image() -> Image:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_the_parser_is_strict():
    with pytest.raises(ValueError, match="exec"):
        parse_dockerfile("FROM x\nCMD uwsgi --ini uwsgi.ini\n")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_dockerfile("FROM x\nENV PATH=/opt/bin:$PATH\n")
    with pytest.raises(ValueError, match="HEALTHCHECK"):
        parse_dockerfile("FROM x\nHEALTHCHECK --interval=5s CMD curl -f http://x/\n")
    parsed = parse_dockerfile('FROM a AS b\nENV X=1\nFROM c\n# note\nENV Y="two words" \\\n'
                              '    Z=3\nWORKDIR /app\nCMD ["run", "it"]\n')
    assert parsed.bases == ["a", "c"] and parsed.env == {"Y": "two words", "Z": "3"}
    assert parsed.workdir == "/app" and parsed.cmd == ["run", "it"]


def test_hadolint_passes_and_would_catch_mistakes():
    hadolint = str(BIN / "hadolint")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    # no rule is switched off (an ignore would need its reason in the comment above it)
    assert re.findall(r"#\s*hadolint ignore=(\S+)", DOCKERFILE.read_text()) == []
    bad = subprocess.run([hadolint, "--no-color", "-"], input="FROM python\nUSER app\n",
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "DL3006" in bad.stdout  # untagged base image


def test_image_shape(image):
    # one stage on a pinned slim Python 3.11 (a patch release, not a moving tag): every
    # requirement is a wheel, so there is no compiler stage to throw away
    assert len(image.bases) == 1, image.bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image.bases[0]), image.bases
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), image.user
    assert image.env["SPILLWAY_STORAGE_DIR"] in image.volumes
    # the same RUN makes the user with that uid and gives it the data directory
    assert any(f"--uid {uid} " in run and "chown " in run
               and run.rstrip().endswith(image.env["SPILLWAY_STORAGE_DIR"])
               for run in image.runs), "the data directory must belong to the image's user"
    host, _, port = image.env["SPILLWAY_BIND"].rpartition(":")
    assert host == "0.0.0.0" and image.exposed == [port]
    assert image.cmd == ["uwsgi", "--ini", "uwsgi.ini"]
    every_run = [args for keyword, args in instructions(DOCKERFILE.read_text()) if keyword == "RUN"]
    assert any("pip install --no-cache-dir" in run and "-r requirements.txt" in run
               for run in every_run)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if bare.startswith("**/"):
            hit = any(fnmatch.fnmatch(PurePosixPath(c).name, bare[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatch(c, bare) for c in candidates)
        if hit:
            ignored = not negated
    return ignored


def test_copied_files_keep_their_repository_paths(image):
    """So running the CMD from the repository root is running it from the WORKDIR."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = set()
    for sources, dest in image.copies:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not dockerignored(source.rstrip("/"), patterns), f"{source} is dockerignored"
            target = PurePosixPath(image.workdir) / dest
            if dest.endswith("/") and not source.endswith("/"):
                target /= PurePosixPath(source).name
            if source != "requirements.txt":  # the build stage's, from its own WORKDIR
                assert target == PurePosixPath(image.workdir) / source.rstrip("/"), (source, dest)
            copied.add(source.rstrip("/"))
    assert {"wsgi.py", "uwsgi.ini", "app"} <= copied
    for kept_out in (".git", ".venv", "spillway-data", "data", "tests", "benchmark/work",
                     ".pytest_cache", "app/__pycache__", "app/routes/__pycache__/x.pyc",
                     "app/testing/servers.py"):
        assert dockerignored(kept_out, patterns), kept_out
    assert (ROOT / image.cmd[-1]).is_file()  # uwsgi.ini, relative to the WORKDIR


def image_environment(image: Image, storage_dir: Path, port: int) -> dict:
    """The image's ENV; PATH finds this venv's uwsgi as the image's /usr/local/bin does."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("SPILLWAY_", "GUNICORN_", "UWSGI_", "PYTHON"))}
    environment.update(image.env)
    environment["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    environment["SPILLWAY_STORAGE_DIR"] = str(storage_dir)
    environment["SPILLWAY_BIND"] = f"127.0.0.1:{port}"
    return environment


def healthcheck(image: Image, environment: dict) -> int:
    timeout = float(image.healthcheck_options["timeout"].rstrip("s"))
    return subprocess.run(image.healthcheck, env=environment, cwd=ROOT, timeout=timeout,
                          capture_output=True).returncode


def test_the_image_cmd_stores_and_serves_files(image, tmp_path):
    environment = image_environment(image, tmp_path / "data", free_port())
    server = launch("uwsgi", image.cmd, environment, tmp_path / "data", tmp_path)
    try:
        assert server.process.args == image.cmd
        sample = tmp_path / "sample.bin"
        sample.write_bytes(hashlib.sha256(b"docker").digest() * (100 << 10))  # 3.2 MB
        ids = []
        for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
            # curl -T sends "Expect: 100-continue" for a body this size
            result = subprocess.run(["curl", "-sS", "--fail", "--expect100-timeout", "10",
                                     "-w", "\n%{time_total}", *extra, "-T", str(sample),
                                     f"{server.url}/upload/"], capture_output=True, timeout=60)
            assert result.returncode == 0, result.stderr
            body, _, elapsed = result.stdout.rpartition(b"\n")
            record = json.loads(body)
            assert record["sha256"] == sha256_of(sample) and record["size"] == 3276800
            assert float(elapsed) < 1.0, f"{extra}: {elapsed} s, curl waited for a 100"
            ids.append(record["id"])
        for file_id in ids:
            out = tmp_path / f"{file_id}.out"
            subprocess.run(["curl", "-sS", "--fail", "-o", str(out),
                            f"{server.url}/files/{file_id}/content"], check=True, timeout=60)
            assert sha256_of(out) == sha256_of(sample)
        blobs = list((tmp_path / "data" / "blobs").iterdir())
        assert len(blobs) == 2  # in the storage dir the environment named
        assert healthcheck(image, environment) == 0
    finally:
        server.stop()
    assert healthcheck(image, environment) != 0  # nobody listening: unhealthy


STDLIB = set(sys.stdlib_module_names)
EMBEDDED = {"uwsgi": "pyuwsgi"}  # the module uWSGI provides to its workers


def third_party_imports() -> set[str]:
    """What the files the image ships import (app/testing/ is dockerignored: it starts
    servers for the tests and the benchmark, with deploy/'s renderer)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    names = set()
    shipped = [path for path in (ROOT / "app").rglob("*.py")
               if not dockerignored(str(path.relative_to(ROOT)), patterns)]
    for path in [ROOT / "wsgi.py", ROOT / "gunicorn.conf.py", *shipped]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in STDLIB and n not in ("app", "__future__")}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_requirements_pin_every_import_the_image_needs():
    """requirements.txt is all the image installs: every third-party module the app and
    its server configs import comes from a distribution pinned there, at the version the
    tests run against (this checks rather than reinstalls)."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, equals, version = line.partition("==")
            assert equals and version, f"not pinned: {line!r}"
            pins[normalized(name)] = version
    owners = metadata.packages_distributions()
    imported = third_party_imports()
    assert {"flask", "werkzeug", "streaming_form_data", "uwsgi"} <= imported
    for module in sorted(imported):
        distributions = owners.get(module) or [EMBEDDED.get(module, "?")]
        assert any(normalized(d) in pins for d in distributions), (module, distributions)
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}"
