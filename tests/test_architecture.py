"""
The package's shape, checked from its source: the import graph has no
cycles, and storage adapters are named and built only where the
composition root (and the storage driver registry) does it.  These read
the code with `ast`, so they hold for every module, imported or not.
"""

from __future__ import annotations

import ast
import os

import attr

PACKAGE = "oci_registry"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# What the rest of the package may import from storage/: the interfaces and
# the driver registry.  Every other module there is some driver's own.
STORAGE_SEAMS = {"oci_registry.storage", "oci_registry.storage.interfaces", "oci_registry.storage.drivers"}
# Where drivers are built, besides their own modules (each declares its factory):
# the composition root and the driver registry.
BUILDERS = {"oci_registry.compose", "oci_registry.storage.drivers"}


@attr.s(auto_attribs=True, frozen=True)
class Import:
    importer: str
    imported: str  # a module of the package
    names: tuple  # what ``from imported import ...`` takes (empty for ``import imported``)
    line: int


def package_modules() -> dict[str, str]:
    """Every module of the package: dotted name -> file."""
    modules = {}
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith((".", "__pycache__")))
        relative = os.path.relpath(directory, os.path.dirname(ROOT)).split(os.sep)
        for name in sorted(files):
            if name.endswith(".py"):
                parts = relative + ([] if name == "__init__.py" else [name[:-3]])
                modules[".".join(parts)] = os.path.join(directory, name)
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every import statement that runs (at module level or in a function), not those under ``if TYPE_CHECKING``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            todo.append(child)


def imports(modules: dict[str, str] | None = None) -> list[Import]:
    """Every import of a package module by a package module."""
    modules = package_modules() if modules is None else modules
    found = []
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node in _import_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        found.append(Import(module, alias.name, (), node.lineno))
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in modules:
                continue
            names = tuple(alias.name for alias in node.names)
            plain = [n for n in names if f"{target}.{n}" not in modules]
            if plain or not names:
                found.append(Import(module, target, tuple(plain), node.lineno))
            for name in names:
                if f"{target}.{name}" in modules:  # ``from . import paths``: the submodule itself
                    found.append(Import(module, f"{target}.{name}", (), node.lineno))
    return found


def cycles(edges: list[Import]) -> list[list[str]]:
    """The import cycles, one per strongly connected group: each a list of modules, the first repeated at the end."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.importer != edge.imported:
            graph.setdefault(edge.importer, set()).add(edge.imported)
    # Tarjan's algorithm, iteratively (no recursion limit to worry about).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(_path_through(sorted(group), graph))
    return groups


def _path_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle inside a strongly connected group, to show the reader."""
    members = set(group)
    start = group[0]
    previous = {start: None}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if child in members and child not in previous:
                previous[child] = node
                todo.append(child)
    return group


# ------------------------------------------------------------------ the checks


def test_the_import_graph_has_no_cycles():
    found = cycles(imports())
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_only_the_storage_package_imports_an_adapter():
    outside = [
        f"{edge.importer} (line {edge.line}) imports {edge.imported}"
        for edge in imports()
        if edge.imported.startswith("oci_registry.storage.")
        and edge.imported not in STORAGE_SEAMS
        and not edge.importer.startswith("oci_registry.storage.")
    ]
    assert not outside, "adapters are reached through the driver registry: " + "; ".join(outside)


def _trees(modules: dict[str, str]):
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            yield module, ast.parse(f.read(), path)


def _provides_storage_driver(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "implementer":
            if any(getattr(arg, "id", None) == "IStorageDriver" for arg in decorator.args):
                return True
    return False


def adapter_classes(modules: dict[str, str] | None = None) -> dict[str, str]:
    """Every class of the package declared with ``@implementer(IStorageDriver, ...)``: class -> its module."""
    modules = package_modules() if modules is None else modules
    return {
        node.name: module
        for module, tree in _trees(modules)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and _provides_storage_driver(node)
    }


def adapter_constructions(modules: dict[str, str] | None = None) -> list[tuple[str, str, int]]:
    """``(module, class, line)`` of every call of an adapter's class, under whatever name it is imported."""
    modules = package_modules() if modules is None else modules
    classes = set(adapter_classes(modules))
    found = []
    for module, tree in _trees(modules):
        aliases = dict.fromkeys(classes, "")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name in classes:
                        aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in aliases:
                found.append((module, aliases[name] or name, node.lineno))
    return found


def test_the_adapters_are_known():
    assert adapter_classes() == {
        "FilesystemDriver": "oci_registry.storage.filesystem",
        "S3Driver": "oci_registry.storage.s3",
    }


def test_only_the_composition_root_and_the_driver_registry_build_an_adapter():
    home = adapter_classes()
    elsewhere = [
        f"{module} (line {line}) builds a {cls}"
        for module, cls, line in adapter_constructions()
        if module not in BUILDERS and module != home[cls]
    ]
    assert not elsewhere, "storage is built by the composition root: " + "; ".join(elsewhere)


# ------------------------------------------------------- the checks check


def _write(tmp_path, files: dict[str, str]) -> dict[str, str]:
    modules = {}
    for name, text in files.items():
        path = tmp_path / (name.replace(".", "_") + ".py")
        path.write_text(text)
        modules[name] = str(path)
    return modules


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    modules = _write(
        tmp_path,
        {
            "oci_registry": "",
            "oci_registry.a": "from . import b\n",
            "oci_registry.b": "def f():\n    from .c import thing\n",
            "oci_registry.c": "import oci_registry.a\n",
            "oci_registry.d": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n",
        },
    )
    assert cycles(imports(modules)) == [["oci_registry.a", "oci_registry.b", "oci_registry.c", "oci_registry.a"]]


def test_an_import_under_type_checking_is_no_cycle(tmp_path):
    modules = _write(
        tmp_path,
        {
            "oci_registry": "",
            "oci_registry.a": "from .b import B\n",
            "oci_registry.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n",
        },
    )
    assert cycles(imports(modules)) == []


def test_a_renamed_adapter_class_is_still_seen_being_built(tmp_path):
    modules = _write(
        tmp_path,
        {
            "oci_registry.storage.s3": "@implementer(IStorageDriver, IClosableDriver)\nclass S3Driver:\n    pass\n",
            "oci_registry.x": "from .storage.s3 import S3Driver as D\n\ndef f(s):\n    return D(s)\n",
        },
    )
    assert adapter_constructions(modules) == [("oci_registry.x", "S3Driver", 4)]

