"""Reading a firmware manifest (firmware/manifest.py) on the host: which firmware files go on a board.

The manifest is written in MicroPython's manifest syntax (`package()`, `module()`, `include()`), so that the
same file can freeze the firmware into a MicroPython image later. deploy (board/deploy.py) reads it here by
running it with small functions of ours that collect the files it names, instead of MicroPython's build
tool (tools/manifestfile.py, not available on our machines): what a deploy copies and what a frozen image
would hold are the same list. Only the calls our manifests use are supported; any other is an error, so a
manifest never silently means more than deploy understood.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgefleetError

# In firmware/: what goes on every board, and on the sim board (the former plus the simulated board).
MANIFEST = "manifest.py"
SIM_MANIFEST = "manifest_sim.py"


def manifest_files(manifest: Path) -> list[Path]:
    """The .py files `manifest` lists (following include()), sorted, each once."""
    found: set[Path] = set()
    _run(Path(manifest).resolve(), found, set())
    return sorted(found)


def _run(manifest: Path, found: set[Path], seen: set[Path]) -> None:
    if manifest in seen:
        raise EdgefleetError(f"manifest {manifest} includes itself")
    if not manifest.is_file():
        raise EdgefleetError(f"manifest {manifest} not found")
    seen = seen | {manifest}
    here = manifest.parent

    def fail(what: str) -> EdgefleetError:
        return EdgefleetError(f"{manifest}: {what}")

    def source(path: Path) -> Path:
        if path.suffix != ".py" or not path.is_file():
            raise fail(f"{path} is not a .py file")
        return path

    def package(package_path: str, files: list[str] | None = None, base_path: str = ".", opt: int | None = None):
        root = here / base_path / package_path
        if not (root / "__init__.py").is_file():
            raise fail(f"package {package_path}: {root} has no __init__.py")
        if files is None:
            found.update(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            found.update(source(root / f) for f in files)

    def module(module_path: str, base_path: str = ".", opt: int | None = None):
        found.add(source(here / base_path / module_path))

    def include(manifest_path: str, **kwargs: object):
        path = here / manifest_path
        _run((path / "manifest.py" if path.is_dir() else path).resolve(), found, seen)

    def metadata(**kwargs: object):
        pass  # description and version of a package: nothing to copy

    def unsupported(name: str):
        def call(*args: object, **kwargs: object):
            raise fail(f"{name}() is not supported here (deploy reads package(), module() and include() only)")

        return call

    names = {"package": package, "module": module, "include": include, "metadata": metadata}
    names.update({n: unsupported(n) for n in ("require", "freeze", "freeze_as_str", "freeze_as_mpy", "freeze_mpy")})
    code = compile(manifest.read_text(), str(manifest), "exec")
    exec(code, {"__builtins__": __builtins__, "__file__": str(manifest), **names})
