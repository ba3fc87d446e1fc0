"""The layers hold: core and storage import no web code, no import cycles under app/, small
modules, route modules independent, the benchmark independent of the tests, the hasher
injected (README, "Architecture")."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path

from werkzeug.http import parse_options_header

from app import Settings, create_app
from app.core.multipart_framing import content_type_parameters
from app.testing.servers import ROOT

APP = ROOT / "app"
WEB_ONLY = ("flask", "werkzeug", "gunicorn", "uwsgi", "pyuwsgi")
MAX_LINES = 320


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(package: Path) -> dict[str, Path]:
    return {module_name(path): path for path in sorted(package.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``name`` imports, at module level or in a function
    (never those under ``if TYPE_CHECKING:``, which do not run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # a submodule, else a name defined in ``source``
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in known and module != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def app_import_graph() -> dict[str, set[str]]:
    modules = modules_under(APP)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_core_and_storage_import_no_web_code():
    names = [name for name in modules_under(APP)
             if name.startswith(("app.core", "app.storage"))]
    assert "app.core.pump" in names and "app.storage.local" in names
    probe = (f"import importlib, json, sys\n"
             f"for name in {names!r}: importlib.import_module(name)\n"
             f"print(json.dumps(sorted(m for m in sys.modules\n"
             f"                        if m.split('.')[0] in {WEB_ONLY!r})))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_checks_below_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = app_import_graph()
    # a function-level import counts: the error handlers import request_body at the top,
    # and the factory is only reached from app/__init__.py inside a function
    assert "app.web.factory" in graph["app"]
    assert "app.web.request_body" in graph["app.web.errors"]


def test_no_import_cycle_under_app():
    assert find_cycle(app_import_graph()) is None


def test_every_module_is_readable_in_one_sitting():
    long = {name: n for name, path in modules_under(APP).items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_route_modules_do_not_import_each_other():
    graph = app_import_graph()
    routes = {name for name in graph if name.startswith("app.web.routes.")}
    assert len(routes) >= 8
    assert {name: graph[name] & routes for name in routes if graph[name] & routes} == {}


def test_storage_imports_only_core():
    graph = app_import_graph()
    outside = {name: {m for m in imported if not m.startswith(("app.core", "app.storage"))}
               for name, imported in graph.items() if name.startswith("app.storage")}
    assert {name: found for name, found in outside.items() if found} == {}


def test_the_server_never_imports_the_test_harness():
    graph = app_import_graph()
    serving = {name for name in graph if not name.startswith("app.testing")}
    assert "app.web.factory" in serving and "app.testing.servers" in graph
    assert {name: found for name in serving
            if (found := {m for m in graph[name] if m.startswith("app.testing")})} == {}


def test_benchmark_imports_nothing_from_tests():
    offenders = []
    for path in sorted((ROOT / "benchmark").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert offenders == []


def test_the_hasher_is_injected_into_every_upload_path(tmp_path):
    """What benchmark/nohash.py relies on: create_app(hasher=...) reaches the pump (raw,
    multipart), where it used to patch a module global."""
    made = []

    class Fixed:
        def update(self, chunk):
            pass

        def hexdigest(self):
            return "ab" * 32

        def state(self):
            return None

    def hasher(writer):
        made.append(writer)
        return Fixed()

    client = create_app(Settings(storage_dir=tmp_path), hasher=hasher).test_client()
    raw = client.put("/upload/a.bin", data=b"x" * 1000)
    form = client.post("/upload", data={"file": (__import__("io").BytesIO(b"y" * 10), "b.bin")},
                       content_type="multipart/form-data")
    assert raw.status_code == 201 and raw.json["sha256"] == "ab" * 32
    assert form.status_code == 201 and form.json["files"][0]["sha256"] == "ab" * 32
    assert len(made) == 2
    normal = create_app(Settings(storage_dir=tmp_path / "n")).test_client()
    assert normal.put("/upload/a.bin", data=b"x" * 1000).json["sha256"] == (
        __import__("hashlib").sha256(b"x" * 1000).hexdigest())


BOUNDARY_CASES = [
    "multipart/form-data; boundary=abc",
    'multipart/form-data; boundary="a b;c"',
    "multipart/form-data; BOUNDARY=Up; charset=utf-8",
    "multipart/form-data; boundary=it's",
    "multipart/form-data; boundary=a'b'c",
    'multipart/form-data; boundary="q\\"x"',
    'multipart/form-data; boundary="a\\\\b"',
    'multipart/form-data; boundary="unterminated; boundary=x',
    "multipart/form-data; boundary=one; boundary=two",
    "multipart/form-data;boundary=  x",
    "multipart/form-data; junk; boundary=y",
    "multipart/form-data; boundary=a%22b",
    "; boundary=nomedia",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    'multipart/form-data; boundary=""',
]


def test_the_core_reads_a_boundary_as_werkzeug_does():
    """app.core parses Content-Type parameters without werkzeug; it must agree with the
    parse_options_header the code used before on everything but RFC 2231 forms."""
    rng = random.Random(12)
    alphabet = "ab;= \t\"\\'%2X"
    fuzz = ["multipart/form-data; " + "".join(rng.choice(alphabet)
                                               for _ in range(rng.randrange(1, 24)))
            for _ in range(3000)]
    for value in BOUNDARY_CASES + [c.replace("boundary", "boundary" if i % 2 else "x")
                                   for i, c in enumerate(fuzz)]:
        assert content_type_parameters(value) == parse_options_header(value)[1], value
