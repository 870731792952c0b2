"""Who may import whom, and who may know which storage format, read off the code.

Every ``import`` and ``from ... import`` of ``app/`` and ``worker/`` is parsed (an
AST walk, so a string or a comment never counts) and held against the layering
the folders announce:

- ``app.core`` imports the standard library, pydantic, Pillow, standardwebhooks,
  ``app.errors`` and itself, nothing else;
- ``app.store`` never imports ``app.services``, ``app.http``, ``app.cli`` or aiohttp;
- ``app.services`` never imports ``app.http``, ``app.cli`` or aiohttp's web server;
- ``app.client`` imports no other ``app`` module;
- ``app`` never imports ``worker``;
- one HTTP handler never imports another;
- only ``app.dispatch`` imports arq's storage internals (``arq.constants``,
  ``arq.jobs``), and no other ``app`` module imports arq at all;
- only ``worker.process.lanes`` touches the attributes of a running arq ``Worker``;
- only ``app.store.keys`` builds a Redis key from the key prefix, in Python or Lua.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted (``from a import b`` counts as ``a.b``)
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Iterator[Path]:
    for package in ("app", "worker"):
        yield from sorted((ROOT / package).rglob("*.py"))


def _imports() -> list[Import]:
    found = []
    for path in _sources():
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(module, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append(Import(module, node.module, node.lineno))
                found += [
                    Import(module, f"{node.module}.{alias.name}", node.lineno)
                    for alias in node.names
                ]
    return found


IMPORTS = _imports()


def _within(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def _violations(
    importer: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    return sorted(
        {
            f"{item.module}:{item.line} imports {item.target}"
            for item in IMPORTS
            if _within(item.module, importer)
            and _within(item.target, *forbidden)
            and not _within(item.target, *allowed)
        }
    )


def test_core_imports_only_the_standard_library_pydantic_pillow_and_errors() -> None:
    allowed_roots = STDLIB | {"pydantic", "PIL", "pydantic_core", "standardwebhooks"}
    bad = sorted(
        {
            f"{item.module}:{item.line} imports {item.target}"
            for item in IMPORTS
            if _within(item.module, "app.core")
            and item.target.split(".")[0] not in allowed_roots
            and not _within(item.target, "app.core", "app.errors")
        }
    )
    assert bad == []


@pytest.mark.parametrize(
    ("importer", "forbidden", "allowed"),
    [
        ("app.store", ("app.services", "app.http", "app.cli", "app.client", "aiohttp"), ()),
        ("app.services", ("app.http", "app.cli", "aiohttp.web", "aiohttp.web_request"), ()),
        ("app.client", ("app",), ("app.client",)),
        ("app", ("worker",), ()),
        ("app.dispatch", ("app.services", "app.http", "app.store"), ("app.store.scripts",)),
    ],
)
def test_layer_imports(importer: str, forbidden: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    assert _violations(importer, forbidden, allowed) == []


def test_no_handler_imports_another() -> None:
    bad = sorted(
        {
            f"{item.module}:{item.line} imports {item.target}"
            for item in IMPORTS
            if _within(item.module, "app.http.handlers")
            and _within(item.target, "app.http.handlers")
            and not item.target.startswith(item.module)
        }
    )
    assert bad == []


def test_only_dispatch_knows_arq_storage_internals() -> None:
    bad = sorted(
        {
            f"{item.module}:{item.line} imports {item.target}"
            for item in IMPORTS
            if (
                _within(item.target, "arq.constants", "arq.jobs")
                or (_within(item.module, "app") and _within(item.target, "arq"))
            )
            and item.module != "app.dispatch"
        }
    )
    assert bad == []


WORKER_INTERNALS = re.compile(
    r"\.(in_progress_timeout_s|allow_pick_jobs|handle_sig|tasks\.(values|clear)|job_key_prefix|"
    r"in_progress_key_prefix)\b"
)


def test_only_the_lane_runner_touches_a_running_arq_worker() -> None:
    owners = {ROOT / "worker/process/lanes.py", ROOT / "app/dispatch.py"}
    bad = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _sources()
        if path not in owners
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if WORKER_INTERNALS.search(line)
    ]
    assert bad == []


KEY_FROM_PREFIX = re.compile(r"prefix\}:|prefix \.\. ':|\{prefix\}:|_prefix\}")


def test_only_the_keys_module_builds_redis_keys() -> None:
    owner = ROOT / "app/store/keys.py"
    sources = [*_sources(), *sorted((ROOT / "app").rglob("*.lua"))]
    bad = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        if path != owner
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if KEY_FROM_PREFIX.search(line)
    ]
    assert bad == []


LUA_CALL = re.compile(r"redis\.call\('(\w+)',\s*([^,)]+)")
LUA_BINDING = re.compile(r"^\s*(?:local\s+)?([\w\s,]+?)\s*=\s*(.+?)\s*$")
KEY_EXPRESSION = re.compile(r"KEYS\[[^\]]+\]")
NOT_A_KEY = {"PUBLISH"}  # its first argument is a channel


def _key_names(script: str) -> set[str]:
    """Names a script binds only ever to ``KEYS[...]`` (``local job, log = KEYS[1], KEYS[2]``)."""
    bound: dict[str, bool] = {}
    for line in script.splitlines():
        match = LUA_BINDING.match(line)
        if match is None or "==" in line:
            continue
        names = [name.strip() for name in match.group(1).split(",")]
        values = [value.strip() for value in match.group(2).split(",")]
        for index, name in enumerate(names):
            value = values[index] if index < len(values) else ""
            is_key = KEY_EXPRESSION.fullmatch(value) is not None
            bound[name] = bound.get(name, True) and is_key
    return {name for name, only_keys in bound.items() if only_keys}


def test_lua_scripts_are_handed_their_keys() -> None:
    """Every key a script touches comes from KEYS (directly or through a name bound
    only to KEYS entries): none is concatenated or read out of data."""
    scripts = sorted([*(ROOT / "app").rglob("*.lua"), *(ROOT / "worker").rglob("*.lua")])
    assert len(scripts) >= 9, "the Lua scripts live in app/store/lua and worker/capacity/lua"
    bad = []
    for path in scripts:
        text = path.read_text()
        names = _key_names(text)
        for number, line in enumerate(text.splitlines(), start=1):
            for command, key in LUA_CALL.findall(line):
                key = key.strip()
                if command in NOT_A_KEY:
                    continue
                if KEY_EXPRESSION.fullmatch(key) is None and key not in names:
                    bad.append(f"{path.relative_to(ROOT)}:{number}: {command} {key}")
    assert bad == []


def _module_of(target: str, modules: set[str]) -> str | None:
    """The project module an import names (``a.b.name`` -> ``a.b``), if any."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycles_not_even_through_a_local_import() -> None:
    modules = {_module_name(path) for path in _sources()}
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for item in IMPORTS:
        target = _module_of(item.target, modules)
        if target is not None and target != item.module and not item.module.startswith(target):
            graph[item.module].add(target)
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []
