"""Imports run one way (DESIGN.md, docs/architecture.md): the wire contract at the bottom, the verbs
on top, no cycles, and a producer never imports worker code."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import fleet

PACKAGE = Path(fleet.__file__).parent

#: The bottom layer: these import nothing of the fleet but each other.
BOTTOM = {"fleet.errors", "fleet.keys", "fleet.models"}
#: What only a worker process needs: a producer's imports must never reach these.
WORKER_ONLY = {"fleet.tasks", "fleet.worker", "fleet.runtime", "fleet.runner", "fleet.consumer"}
#: The top: nothing below imports them (``python -m fleet`` is the command line itself).
TOP = {"fleet.cli", "fleet.api", "fleet.__main__"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """Modules imported when the module loads (not under TYPE_CHECKING, not inside a function).

    ``from fleet.x import y`` names the module ``fleet.x.y`` when there is one, else ``fleet.x``.
    """
    found: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If) and not _is_type_checking(node):
            body.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            body.extend(node.body + node.orelse + node.finalbody)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


@cache
def graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        out[name] = _top_level_imports(ast.parse(path.read_text()), set(modules)) - {name}
    return out


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph().get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_there_are_no_import_cycles() -> None:
    cycles = sorted(m for m in graph() if m in _reach(m) and m != "fleet")
    assert cycles == []


def test_the_bottom_layer_imports_only_itself() -> None:
    for module in BOTTOM:
        assert graph()[module] <= BOTTOM, (module, graph()[module] - BOTTOM)


def test_a_producer_never_imports_worker_code() -> None:
    for producer in ("fleet.producer", "fleet.inbox", "fleet.app"):
        assert not _reach(producer) & WORKER_ONLY, (producer, _reach(producer) & WORKER_ONLY)


def test_nothing_below_imports_the_verbs() -> None:
    for module, deps in graph().items():
        if not any(module == top or module.startswith(top + ".") for top in TOP):
            bad = {d for d in deps if any(d == top or d.startswith(top + ".") for top in TOP)}
            assert not bad, (module, bad)
