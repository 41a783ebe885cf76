"""The firmware's layout, checked statically under CPython (this file is not a MicroPython test: see
tests/firmware/conftest.py).

Every firmware .py is parsed with `ast` and the import graph of the firmware's modules (node.*, simboard.*,
boot, main) is built from every import statement, also the ones inside functions (a lazy import is still a
dependency). It must have no cycles: a module that imports its importer makes both load and stay together,
which defeats releasing boot-only modules and hides which side owns what. No module may import another's
private name (`from node.x import _y`) or use one through an imported module (`x._y`): a private name is its
module's own business. And firmware/manifest.py, what a deploy puts on a board, lists exactly boot.py,
main.py and the node package, never the simulator (simboard). Last, node.logmount's private copy of the flash
log's sector format (it cannot import node.flashlog, which imports it) must equal node.flashlog's.
"""

from __future__ import annotations

import ast
from pathlib import Path

from import_graph import cycles

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
# Build descriptions read on the host, not firmware modules.
MANIFESTS = {"manifest.py", "manifest_sim.py"}
# Firmware trees that hold no MicroPython modules of ours.
NOT_MODULES = {"cmodule", "lib_src"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(FIRMWARE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def firmware_modules() -> dict[str, Path]:
    found = {}
    for p in sorted(FIRMWARE.rglob("*.py")):
        rel = p.relative_to(FIRMWARE)
        if "__pycache__" in rel.parts or rel.parts[0] in NOT_MODULES or rel.as_posix() in MANIFESTS:
            continue
        found[_module_name(p)] = p
    return found


def _resolve(name: str, level: int, current: str, is_package: bool) -> str:
    if not level:
        return name
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


class _Imports(ast.NodeVisitor):
    """Imports of firmware modules in one module: edges, names bound to modules, private names imported."""

    def __init__(self, current: str, is_package: bool, modules: set[str]) -> None:
        self.current = current
        self.is_package = is_package
        self.modules = modules
        self.edges: set[str] = set()
        self.bound: dict[str, str] = {}  # local name -> firmware module it names
        self.problems: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name in self.modules:
                self.edges.add(a.name)
            if a.asname and a.name in self.modules:
                self.bound[a.asname] = a.name
            elif not a.asname:
                top = a.name.split(".")[0]
                if top in self.modules:
                    self.bound[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        src = _resolve(node.module or "", node.level, self.current, self.is_package)
        for a in node.names:
            full = f"{src}.{a.name}"
            if full in self.modules:
                self.edges.add(full)
                self.bound[a.asname or a.name] = full
                continue
            if src in self.modules:
                self.edges.add(src)
                if _private(a.name) and src != self.current:
                    self.problems.append(f"{self.current}:{node.lineno} imports {a.name} from {src}")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def analyse() -> tuple[dict[str, set[str]], list[str]]:
    """(import graph: module -> firmware modules it imports, private-name problems)."""
    mods = firmware_modules()
    names = set(mods)
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        v = _Imports(name, path.name == "__init__.py", names)
        v.visit(tree)
        graph[name] = v.edges - {name}
        problems += v.problems
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                target = v.bound.get(node.value.id)
                if target is not None and target != name:
                    problems.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr} of {target}")
    return graph, problems




def test_firmware_modules_are_found():
    mods = firmware_modules()
    assert "node.app" in mods and "node.hw" in mods and "main" in mods


def test_import_graph_has_no_cycles():
    graph, _ = analyse()
    assert cycles(graph) == []


def test_no_private_names_across_modules():
    _, problems = analyse()
    assert problems == []


def _listed(manifest: str) -> set[str]:
    from edgefleet.board.manifest import manifest_files

    return {p.relative_to(FIRMWARE).as_posix() for p in manifest_files(FIRMWARE / manifest)}


def _tree(package: str) -> set[str]:
    return {p.relative_to(FIRMWARE).as_posix() for p in (FIRMWARE / package).rglob("*.py")}


def test_manifest_lists_exactly_the_board_files():
    listed = _listed("manifest.py")
    assert not [p for p in listed if p.startswith("simboard/")]
    assert listed == _tree("node") | {"boot.py", "main.py"}


def test_sim_manifest_adds_only_the_simulated_board():
    assert _listed("manifest_sim.py") == _listed("manifest.py") | _tree("simboard")


def _consts(path: Path) -> dict[str, int]:
    out = {}
    for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "const"
        ):
            out[node.targets[0].id] = ast.literal_eval(node.value.args[0])
    return out


def test_logmount_repeats_the_flash_logs_sector_format():
    """node.logmount repeats node.flashlog's sector format as private constants (it must not import it)."""
    log = _consts(FIRMWARE / "node" / "flashlog.py")
    mount = _consts(FIRMWARE / "node" / "logmount.py")
    repeated = {name[1:]: v for name, v in mount.items() if name[1:] in log}
    assert set(repeated) >= {"SECTOR", "SH_SIZE", "ST_ERASED", "ST_VALID", "ST_BAD"}
    assert repeated == {name: log[name] for name in repeated}
