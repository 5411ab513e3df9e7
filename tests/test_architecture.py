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

# What the rest of the package may import from storage/: the interfaces, the
# driver registry and the mark of background work (`priority`).  Every other
# module there is some driver's own.
STORAGE_SEAMS = {
    "oci_registry.storage",
    "oci_registry.storage.interfaces",
    "oci_registry.storage.drivers",
    "oci_registry.storage.priority",
}
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
        "MeasuredDriver": "oci_registry.metrics.storage",  # not a storage: a decorator timing the chosen one
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


# ------------------------------------------------------------ Twisted internals

COMPAT = "oci_registry.twisted_compat"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def twisted_internals() -> set[str]:
    """The private Twisted names `twisted_compat` relies on: attributes it reads or sets, hooks it overrides."""
    with open(package_modules()[COMPAT], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef) and _private(node.name):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("twisted"):
            names.update(alias.name for alias in node.names if _private(alias.name))
    return names


def _twisted_names(tree: ast.AST) -> set[str]:
    """Names a module binds to Twisted: ``from twisted.web import http``, ``from .. import twisted_compat``..."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if (
                module.startswith("twisted")
                or module.endswith("twisted_compat")
                or any(a.name == "twisted_compat" for a in node.names)
            ):
                names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(
                (alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name.startswith("twisted")
            )
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _own_attributes(cls: ast.ClassDef) -> set[str]:
    """What a class sets itself (``self.x = ...``, ``x = ...`` in its body): its own, whatever the name."""
    own = set()
    for node in ast.walk(cls):
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            if isinstance(target, ast.Attribute) and _root(target) in ("self", "cls"):
                own.add(target.attr)
            elif isinstance(target, ast.Name):
                own.add(target.id)
    return own


def private_twisted_uses(modules: dict[str, str] | None = None, internals: set[str] | None = None) -> list[str]:
    """Where a module other than `twisted_compat` imports a private Twisted name or touches a Twisted internal."""
    modules = package_modules() if modules is None else modules
    internals = twisted_internals() if internals is None else internals
    found = []
    for module, tree in _trees(modules):
        if module == COMPAT:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                private = [a.name for a in node.names if _private(a.name)] + (
                    [node.module] if any(_private(part) for part in node.module.split(".")) else []
                )
                found += [f"{module} (line {node.lineno}) imports {name}" for name in private]
            elif isinstance(node, ast.Attribute) and node.attr in internals:
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{module} (line {node.lineno}) uses .{node.attr}")
        twisted = _twisted_names(tree)
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            if not any(_root(base) in twisted for base in cls.bases):
                continue
            own = _own_attributes(cls)
            for node in ast.walk(cls):
                if isinstance(node, ast.Attribute) and node.attr in own:
                    continue
                if isinstance(node, ast.FunctionDef) and node.name in internals:
                    found.append(f"{module} (line {node.lineno}) overrides {cls.name}.{node.name}")
                elif isinstance(node, ast.Attribute) and node.attr in internals:
                    found.append(f"{module} (line {node.lineno}) uses {cls.name}'s .{node.attr}")
    return found


def test_twisted_internals_are_used_only_in_the_compatibility_module():
    internals = twisted_internals()
    assert {"_command", "_maybeChooseTransferDecoder", "_tempDataLen", "_giveUp"} <= internals
    found = private_twisted_uses(internals=internals)
    assert not found, "go through oci_registry/twisted_compat.py: " + "; ".join(found)


def test_a_twisted_internal_outside_the_compatibility_module_is_found(tmp_path):
    modules = _write(
        tmp_path,
        {
            "oci_registry.a": "from twisted.web import http\n\nclass C(http.HTTPChannel):\n"
            "    def _respondToBadRequestAndDisconnect(self):\n        return self._version\n",
            "oci_registry.b": "from twisted.web._newclient import HTTP11ClientProtocol\n\n"
            "def f(channel):\n    return channel._command\n",
            "oci_registry.c": "class Own:\n    def f(self):\n        return self._version\n",
        },
    )
    found = private_twisted_uses(modules, {"_version", "_command", "_respondToBadRequestAndDisconnect"})
    assert found == [
        "oci_registry.a (line 4) overrides C._respondToBadRequestAndDisconnect",
        "oci_registry.a (line 5) uses C's ._version",
        "oci_registry.b (line 1) imports twisted.web._newclient",
        "oci_registry.b (line 4) uses ._command",
    ]
