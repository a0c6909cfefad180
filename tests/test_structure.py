"""The package's structure, checked from its source: one error tree, imports that go one way, a kernel (``dpsims``)
that names no package above it (docs/design.md, "Layout" and "Errors")."""

from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import pytest

from dpsims.errors import DpSimsError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dpsims", "runtimes", "calibration", "train", "export")


def modules() -> dict[str, Path]:
    """Every module of the wheel's packages: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (inside functions too; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_cycle_even_through_imports_inside_functions():
    known = modules()
    graph = {name: imports_of(name, path, set(known)) for name, path in known.items()}
    # Tarjan's strongly connected components: a component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_kernel_imports_no_package_above_it():
    known = modules()
    for name, path in known.items():
        if name.split(".")[0] == "dpsims":
            assert {m.split(".")[0] for m in imports_of(name, path, set(known))} <= {"dpsims"}, name
            # not even as a string: a logger name, a module path to import (pip extras such as "train" are names of
            # the distribution's extras, not of packages: the values of dpsims.optional.EXTRA_OF)
            extras = set(importlib.import_module("dpsims.optional").EXTRA_OF.values())
            strings = {n.value for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            for package in PACKAGES[1:]:
                assert not {t for t in strings if t.startswith(f"{package}.")}, (name, package)
                assert package not in strings or package in extras, (name, package)


def test_stages_import_one_way():
    """runtimes imports only the kernel; calibration not export; train not calibration or export."""
    allowed = {"dpsims": {"dpsims"}, "runtimes": {"dpsims", "runtimes"},
               "train": {"dpsims", "runtimes", "train"}, "calibration": {"dpsims", "runtimes", "train", "calibration"},
               "export": set(PACKAGES)}
    known = modules()
    for name, path in known.items():
        top = name.split(".")[0]
        used = {m.split(".")[0] for m in imports_of(name, path, set(known))}
        assert used <= allowed[top], (name, used - allowed[top])


#: exceptions a Python protocol requires by name: ``__getitem__`` ends iteration and answers ``x[i]`` with
#: IndexError; a method a subclass must override raises NotImplementedError (any function)
PROTOCOL = {("__getitem__", "IndexError"), (None, "NotImplementedError")}


def raised_names(path: Path) -> set[str]:
    """The names of the exception classes that ``raise Name(...)`` / ``raise Name`` statements of ``path`` let out
    of their function: not one a ``try`` around it catches by that name, nor one a protocol requires."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Raise) and node.exc is not None):
            continue
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if not isinstance(exc, ast.Name):
            continue
        enclosing, caught = node, False
        while enclosing in parents and not isinstance(enclosing, (ast.FunctionDef, ast.AsyncFunctionDef)):
            child, enclosing = enclosing, parents[enclosing]
            if isinstance(enclosing, ast.Try) and child in enclosing.body:
                caught |= any(h.type is not None and exc.id in ast.unparse(h.type) for h in enclosing.handlers)
        function = getattr(enclosing, "name", None)
        if not caught and not {(function, exc.id), (None, exc.id)} & PROTOCOL:
            names.add(exc.id)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_error_raised_derives_from_the_one_root(package):
    """Each ``raise SomeError(...)`` in the package names a subclass of DpSimsError (re-raising a caught exception
    by its variable, ``raise e`` / ``raise``, passes a library's own error on and is not counted)."""
    checked = 0
    for name, path in modules().items():
        if name.split(".")[0] != package:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # an optional third-party library (tensorrt, ...) is missing: not ours
            if (e.name or "").split(".")[0] in PACKAGES:
                raise
            pytest.skip(f"{name} needs {e.name}")
        for raised in raised_names(path):
            cls = getattr(module, raised, None) or getattr(builtins, raised, None)
            if cls is None or (isinstance(cls, type) and not issubclass(cls, Exception)):
                continue  # a local variable holding a caught exception; KeyboardInterrupt, SystemExit: signals
            assert isinstance(cls, type) and issubclass(cls, DpSimsError), f"{name} raises {raised}"
            checked += 1
    assert checked > 0
