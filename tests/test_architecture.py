"""The layout rules of the package, checked on the source (README, "Architecture").

    core (ncakit/*.py)  <-  toy track (ncakit/toy/)
    core (ncakit/*.py)  <-  scale track (ncakit/scale/)

- the core imports neither track, and the two tracks never import each other;
- ``import ncakit`` and the whole toy track load no transformers / datasets / accelerate / peft;
- importing the whole scale track loads no matplotlib (it is imported when a plot is drawn);
- no module imports another module's private (underscore) names;
- no public name is defined in both tracks (or in a track and the core) with two meanings;
- no module is over 800 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ncakit"
MAX_LINES = 800
SCALE_ONLY = (
    "transformers",
    "datasets",
    "accelerate",
    "peft",
    "tokenizers",
    "trl",
    "bitsandbytes",
    "deepspeed",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _track(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("toy", "scale") else "core"


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """Every import in a file, function-level ones included: (module, imported names, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = _module_name(path).split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [a.name for a in node.names], node.lineno))
    return found


def _ncakit_imports(path: Path):
    """ncakit modules a file imports (``from ncakit import toy`` counts as ``ncakit.toy``)."""
    for module, names, line in _imports(path):
        if module == "ncakit":
            for name in names:
                yield (f"ncakit.{name}" if f"ncakit.{name}" in MODULES else "ncakit"), line
        elif module.startswith("ncakit."):
            yield module, line


def test_the_three_parts_exist():
    tracks = {_track(m) for m in MODULES}
    assert tracks == {"core", "toy", "scale"}, tracks
    assert {"ncakit.losses", "ncakit.registry", "ncakit.validation"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_into_the_core_or_the_own_track(module):
    own = _track(module)
    for target, line in _ncakit_imports(MODULES[module]):
        other = _track(target)
        assert other in ("core", own), (
            f"{module} (line {line}) imports {target}: the {own} part may import the core and itself only"
        )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_cross_a_module_boundary(module):
    for target, names, line in _imports(MODULES[module]):
        if not target.startswith("ncakit"):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, (
            f"{module} (line {line}) imports private {private} from {target}; make them public"
        )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_a_warehouse(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module}: {n} lines > {MAX_LINES}; split it by job"


def _public_definitions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return {n for n in names if not n.startswith("_")}


def test_no_public_name_means_two_things_across_parts():
    where: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for name in _public_definitions(path):
            where.setdefault(name, set()).add(module)
    clashes = {n: sorted(ms) for n, ms in where.items() if len({_track(m) for m in ms}) > 1}
    assert not clashes, f"defined in more than one part of the package: {clashes}"


def _loaded_after(imports: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in imports) + "print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return {m.split(".")[0] for m in out.stdout.split()}


def test_import_ncakit_and_the_toy_track_load_no_scale_libraries():
    toy = [m for m in MODULES if _track(m) == "toy"]
    loaded = _loaded_after(["ncakit", *toy])
    assert not loaded & set(SCALE_ONLY), (
        f"import ncakit + the toy track loaded {sorted(loaded & set(SCALE_ONLY))}"
    )


def test_import_ncakit_loads_no_matplotlib():
    assert "matplotlib" not in _loaded_after(["ncakit"])


def test_the_scale_track_loads_no_matplotlib_until_it_draws():
    scale = [m for m in MODULES if _track(m) == "scale"]
    assert scale, "no scale modules found"
    assert "matplotlib" not in _loaded_after(scale)
