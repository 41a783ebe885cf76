"""The host package's layout rules, checked from the source alone (ast; nothing is imported).

Why: "what may I touch?" needs an answer. Imports that only go one way and private names that stay inside their
module are what let a module be changed without reading the rest of the package (issue #12). Every import
counts, including relative ones and those inside functions: a function-level import hides a circle from the
interpreter at load time, not from the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

from import_graph import cycles

PKG_ROOT = Path(__file__).resolve().parents[2] / "host"
PKG = "edgefleet"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted((PKG_ROOT / PKG).rglob("*.py")):
        parts = list(path.relative_to(PKG_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve_from(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` names (relative levels resolved against `module`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Imports(ast.NodeVisitor):
    """One module's imports of other edgefleet modules, the local names bound to edgefleet modules, and every
    private name it takes from another edgefleet module (by `from m import _x` or as `m._x`)."""

    def __init__(self, module: str):
        self.module = module
        self.targets: set[str] = set()
        self.aliases: dict[str, str] = {}  # local name -> edgefleet module it is bound to
        self.private: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name == PKG or a.name.startswith(PKG + "."):
                if a.name in MODULES:
                    self.targets.add(a.name)
                self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        src = resolve_from(self.module, node)
        if not (src == PKG or src.startswith(PKG + ".")):
            return
        if src in MODULES and not (is_package(src) and all(f"{src}.{a.name}" in MODULES for a in node.names)):
            self.targets.add(src)
        for a in node.names:
            sub = f"{src}.{a.name}"
            if sub in MODULES:
                self.targets.add(sub)
                self.aliases[a.asname or a.name] = sub
            elif is_private(a.name) and src != self.module:
                self.private.append(f"line {node.lineno}: from {src} import {a.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        owner = dotted(node.value, self.aliases)
        private = is_private(node.attr) and f"{owner}.{node.attr}" not in MODULES
        if owner and owner in MODULES and owner != self.module and private:
            self.private.append(f"line {node.lineno}: {owner}.{node.attr}")
        self.generic_visit(node)


def dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`a.b.c` as the edgefleet module it names, through the module's import aliases; None otherwise."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        head = dotted(node.value, aliases)
        return f"{head}.{node.attr}" if head else None
    return None


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def scan() -> dict[str, Imports]:
    out = {}
    for name, path in MODULES.items():
        v = Imports(name)
        v.visit(ast.parse(path.read_text(), str(path)))
        out[name] = v
    return out


def test_scanner_sees_relative_and_function_level_imports():
    src = "from . import b\nfrom ..c import _d\ndef f():\n    import edgefleet.x.y as z\n    return z._p, b._q\n"
    v = Imports.__new__(Imports)
    Imports.__init__(v, "edgefleet.x.a")
    saved = dict(MODULES)
    MODULES.update({k: Path(k + ".py") for k in ("edgefleet.x.a", "edgefleet.x.b", "edgefleet.c", "edgefleet.x.y")})
    try:
        v.visit(ast.parse(src))
    finally:
        MODULES.clear()
        MODULES.update(saved)
    assert v.targets == {"edgefleet.x.b", "edgefleet.c", "edgefleet.x.y"}
    assert v.private == ["line 2: from edgefleet.c import _d", "line 5: edgefleet.x.y._p", "line 5: edgefleet.x.b._q"]


def test_no_import_cycles():
    found = scan()
    graph = {m: {t for t in v.targets if t != m} for m, v in found.items()}
    assert cycles(graph) == []


def test_no_private_names_across_modules():
    found = scan()
    bad = [f"{m}: {p}" for m, v in sorted(found.items()) for p in v.private]
    assert bad == []
