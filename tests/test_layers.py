"""The layer rule: every import inside ``src/ffaccel`` points down the stack, never up.

spec -> abi -> drivers -> transports -> runtime -> frontends -> conformance -> bench -> report -> cli,
lowest first (docs/architecture.md's table, top-down, is the same list reversed). The
conformance suite, the benchmarks and ``ffaccel report`` sit above the front-ends because they
exercise them (``matmul`` is measured and judged), below the command line that runs them.

The top-level modules are the front-ends under the names users import (``ffaccel``,
``ffaccel.post``, ``ffaccel.blas``, ``ffaccel.torch``): importing the package root from a
lower layer would pull the front-ends in, so it counts as an import of the front-ends.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import ffaccel

LAYERS = ("spec", "abi", "drivers", "transports", "runtime", "frontends", "conformance", "bench", "report", "cli")
RANK = {name: i for i, name in enumerate(LAYERS)}
#: Modules directly in the package: the public names of the front-ends.
TOP_LEVEL = {"__init__": "frontends", "post": "frontends", "blas": "frontends", "torch": "frontends"}
PACKAGE = Path(ffaccel.__file__).parent
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"  # the layer table's page


def layer_of(module: str, package: str = "ffaccel") -> str | None:
    """The layer of a module of the package (``ffaccel.abi.layout`` -> ``abi``); None outside it."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    if len(parts) == 1:
        return TOP_LEVEL["__init__"]
    if parts[1] in RANK:
        return parts[1]
    return TOP_LEVEL.get(parts[1], TOP_LEVEL["__init__"])  # a name from the root (__version__): the root


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``source``, relative ones resolved, at any depth (in functions too)."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                yield node.lineno, origin
            for alias in node.names:  # a name may be a module: `from .. import frontends`
                yield node.lineno, f"{origin}.{alias.name}"
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def modules(root: Path, package: str) -> Iterator[tuple[Path, str, bool]]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        is_package = rel.name == "__init__"
        parts = [package, *rel.parts[:-1]] if is_package else [package, *rel.parts]
        yield path, ".".join(parts), is_package


def module_layer(module: str, package: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return TOP_LEVEL["__init__"]
    return parts[1] if parts[1] in RANK else TOP_LEVEL.get(parts[1]) if len(parts) == 2 else None


def upward_imports(root: Path, package: str = "ffaccel") -> list[str]:
    """Every import of a higher layer, as ``path:line: layer imports module (layer above)``."""
    bad = []
    for path, module, is_package in modules(root, package):
        here = module_layer(module, package)
        if here is None:
            continue  # reported by test_every_module_is_in_a_layer
        for line, name in imported_modules(path.read_text(encoding="utf-8"), module, is_package):
            there = layer_of(name, package)
            if there is not None and RANK[there] > RANK[here]:
                bad.append(f"{path}:{line}: {here} imports {name} ({there} is above {here})")
    return sorted(set(bad))


def test_imports_point_down_only() -> None:
    bad = upward_imports(PACKAGE)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_every_module_is_in_a_layer() -> None:
    lost = [str(p) for p, module, _ in modules(PACKAGE, "ffaccel") if module_layer(module, "ffaccel") is None]
    assert not lost, f"modules outside every layer (add their folder to LAYERS, in its place): {lost}"


def test_the_architecture_page_lists_the_layers_in_this_order() -> None:
    table = re.findall(r"^\| [^|]+ \| `src/ffaccel/(\w+)` \|", ARCHITECTURE.read_text(encoding="utf-8"), re.M)
    assert table == list(reversed(LAYERS)), table
    assert "tests/test_layers.py" in ARCHITECTURE.read_text(encoding="utf-8")


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_rule_catches_every_way_of_importing_upward(tmp_path: Path) -> None:
    files = {f"{layer}/__init__.py": "" for layer in LAYERS}
    files["abi/ok.py"] = "from ..spec import rules\nimport pkg.spec\nfrom . import layout\n"
    files["abi/relative.py"] = "from ..runtime import Device\n"
    files["abi/by_name.py"] = "from .. import frontends\n"
    files["abi/absolute.py"] = "def late():\n    import pkg.cli.main\n"
    files["abi/dynamic.py"] = "import importlib\nimportlib.import_module('pkg.transports.server')\n"
    files["abi/root.py"] = "import pkg\n"  # the root is the front-ends' facade
    files["drivers/ok.py"] = "from .. import spec, abi\n"
    files["cli/ok.py"] = "from .. import __version__\nfrom ..report import run\n"
    bad = upward_imports(_package(tmp_path, files), "pkg")
    flagged = sorted({line.split(":")[0].rsplit("/", 1)[1] for line in bad})
    assert flagged == ["absolute.py", "by_name.py", "dynamic.py", "relative.py", "root.py"], bad
