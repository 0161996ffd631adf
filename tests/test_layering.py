"""The rooms of dipfill import only what they may (docs/architecture.md), and nothing circles.

Read from the source with :mod:`ast`, function-level imports included, so an import hidden
inside a function to dodge a rule (or a cycle) is caught too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dipfill"

#: The rooms, top floor first; a room may import rooms below it only.
FLOORS = [
    ("cli",),
    ("pipeline", "eval"),
    ("raster",),
    ("stac",),
    ("engines", "tiling"),
    ("specs", "storage", "keyvalue", "stretch"),
    ("errors",),
]

#: Third-party (or stdlib) modules each room must not import.
FORBIDDEN = {
    "tiling": {"torch", "ray", "rasterio", "requests", "httpx", "pystac", "pystac_client"},
    "engines": {"ray", "rasterio", "zarr", "requests", "httpx", "pystac", "pystac_client"},
    "stac": {"torch", "ray", "rasterio", "zarr"},
    "raster": {"torch", "ray"},
    "eval": {"ray"},
    "specs": {"torch", "ray", "rasterio", "numpy"},
    "storage": {"torch", "ray", "rasterio"},
    "errors": {"torch", "ray", "rasterio", "numpy"},
}
#: The one exception to "engines import no rasterio": GDAL's fill algorithm on in-memory arrays.
ALLOWED = {"engines": {"rasterio.fill"}}
HTTP_CLIENTS = {"requests", "httpx", "urllib3", "urllib.request", "http.client", "aiohttp", "pystac_client"}
FILE_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (absolute names)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dipfill"


def _matches(name: str, banned: str) -> bool:
    return name == banned or name.startswith(banned + ".")


def test_every_room_has_a_floor() -> None:
    rooms = {_room(m) for m in MODULES} - {"dipfill"}
    placed = {r for floor in FLOORS for r in floor}
    assert rooms <= placed, f"rooms without a floor in FLOORS: {sorted(rooms - placed)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_rooms_import_only_rooms_below_them(module: str) -> None:
    floor_of = {r: i for i, floor in enumerate(FLOORS) for r in floor}
    room = _room(module)
    if room == "dipfill":
        return  # the package root re-exports the public API
    bad = []
    for name in _imports(MODULES[module]):
        if not name.startswith("dipfill.") or name in MODULES and _room(name) == "dipfill":
            continue
        target = _room(name)
        if target == room or target == "dipfill" or target not in floor_of:
            continue  # same room, the package root (__version__), or a name imported from a module
        if floor_of[target] <= floor_of[room]:
            bad.append(name)
    assert not bad, f"{module} ({room}) imports rooms on its own floor or above: {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_rooms_avoid_the_libraries_they_must_not_touch(module: str) -> None:
    room = _room(module)
    names = _imports(MODULES[module])
    banned = set(FORBIDDEN.get(room, ()))
    if module != "dipfill.pipeline.ray_executor":
        banned.add("ray")
    if room != "stac":
        banned |= HTTP_CLIENTS
    allowed = ALLOWED.get(room, set())
    hits = sorted(n for n in names for b in banned if _matches(n, b) and not any(_matches(n, a) for a in allowed))
    assert not hits, f"{module} ({room}) imports {hits}"


def test_only_the_ray_executor_imports_ray_and_it_imports_no_torch() -> None:
    users = sorted(m for m, p in MODULES.items() if any(_matches(n, "ray") for n in _imports(p)))
    assert users == ["dipfill.pipeline.ray_executor"]
    assert not any(_matches(n, "torch") for n in _imports(MODULES["dipfill.pipeline.ray_executor"]))
    pipeline_torch = sorted(m for m, p in MODULES.items()
                            if _room(m) == "pipeline" and any(_matches(n, "torch") for n in _imports(p)))
    assert pipeline_torch == [], "the pipeline reaches torch only through engines"


def test_engines_open_no_files() -> None:
    for module, path in MODULES.items():
        if _room(module) != "engines":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                assert name not in FILE_CALLS, f"{module}:{node.lineno} calls {name}(): engines do no file I/O"


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for name in _imports(path):
            while name and name not in MODULES:
                name = name.rpartition(".")[0]  # "dipfill.x.y.Name" -> the module "dipfill.x.y"
            if name and name != module and name.startswith("dipfill.") and not module.startswith(name + "."):
                graph[module].add(name)
    # a package's __init__ importing its own submodules is not a cycle of ideas
    for module in list(graph):
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(MODULES):
        if state.get(module) is None and visit(module, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_the_rule_checker_catches_a_violation(tmp_path: Path) -> None:
    # the checks above read source; make sure they would see an upward, function-level import
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import ray\n    from dipfill.pipeline.run import run\n")
    names = _imports(bad)
    assert "ray" in names and "dipfill.pipeline.run" in names
