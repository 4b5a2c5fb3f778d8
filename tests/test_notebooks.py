"""Hygiene of the tutorial notebooks, checked without executing them.

For every ``tutorials/NN_*.ipynb``:

(a) it has a jupytext ``py:percent`` twin ``NN_*.py`` and the two are in sync (the notebook
    re-rendered by jupytext equals the committed ``.py``, ignoring only jupytext's YAML header);
(b) it is scrubbed: no widget state, no cell execution metadata, no ``language_info`` or other
    kernel-specific metadata, execution counts 1, 2, 3, ... from one clean top-to-bottom run,
    no error outputs;
(c) it has at least one ``nbval-check-output`` cell, and every such cell has an output to check;
(d) it imports ncakit and writes no loss of its own (no ``def ...loss``, no loss formula built
    from ``logsigmoid`` / ``log_softmax`` / ``logsumexp``): every loss comes from ncakit.losses.

Executing the notebooks is nbval's job in ``make test``:
``pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tutorials/sanitize.cfg tutorials/NN_*.ipynb``.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
TWINS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
CHECK_TAG = "nbval-check-output"

# Notebook-level metadata a scrubbed notebook may keep (a generic kernelspec lets Jupyter pick the
# reader's own python3 kernel; jupytext may keep its filter settings). Everything else (widgets,
# language_info with the local Python version, signature, ...) is junk.
ALLOWED_NOTEBOOK_METADATA = {"kernelspec", "jupytext"}
ALLOWED_CELL_METADATA = {"tags", "jupyter", "slideshow", "lines_to_next_cell"}

# A notebook that writes one of these is re-implementing a loss instead of importing it.
LOSS_FORMULA_PATTERNS = {
    r"\bdef\s+\w*loss\w*\s*\(": "defines a loss function",
    r"\b\w*loss\w*\s*=\s*lambda\b": "defines a loss as a lambda",
    r"\blogsigmoid\s*\(": "writes a loss formula with logsigmoid",
    r"\blog_softmax\s*\(": "writes a loss formula with log_softmax",
    r"\blogsumexp\s*\(": "writes a loss formula with logsumexp",
    r"\blog\s*\(\s*(torch\.|F\.)?sigmoid\s*\(": "writes log(sigmoid(...))",
}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _load_build():
    """tutorials/build.py (not a package): the sync test uses its rendering and header rule."""
    pytest.importorskip("jupytext")
    pytest.importorskip("nbclient")
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(ipynb: Path) -> list[dict]:
    return json.loads(ipynb.read_text())["cells"]


def _code(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


notebooks = pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def test_there_are_tutorials():
    assert NOTEBOOKS, f"no tutorials/NN_*.ipynb found in {TUTORIALS}"


@pytest.mark.parametrize("py", TWINS, ids=[p.stem for p in TWINS])
def test_every_twin_has_its_notebook(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), (
        f"{_rel(py)} has no notebook {ipynb.name}: build it with `.venv/bin/python tutorials/build.py {_rel(py)}`"
    )


@notebooks
def test_a_pair_is_in_sync(ipynb):
    py = ipynb.with_suffix(".py")
    assert py.exists(), (
        f"{_rel(ipynb)} has no py:percent twin {py.name}: create it with "
        f"`.venv/bin/jupytext --to py:percent {_rel(ipynb)}` and commit both"
    )
    build = _load_build()
    expected = build.strip_header(build.render_twin(ipynb))
    committed = build.strip_header(py.read_text())
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            f"{py.name} (committed)",
            f"{ipynb.name} rendered by jupytext",
            n=1,
        )
        pytest.fail(
            f"{_rel(py)} and {_rel(ipynb)} are out of sync.\n"
            f"  edited the .py?  rebuild the notebook: `.venv/bin/python tutorials/build.py {_rel(py)}`\n"
            f"  edited or ran the .ipynb in Jupyter?  `make scrub` "
            f"(or `.venv/bin/python tutorials/build.py --scrub-only {_rel(ipynb)}`)\n"
            + "".join(list(diff)[:80]),
            pytrace=False,
        )


@notebooks
def test_b_notebook_is_scrubbed(ipynb):
    nb = json.loads(ipynb.read_text())
    problems = []
    extra = sorted(set(nb.get("metadata", {})) - ALLOWED_NOTEBOOK_METADATA)
    if extra:
        problems.append(f"notebook metadata {extra} (widget state / kernel-specific keys)")
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name", "python3")
    if kernel != "python3":
        problems.append(f"kernelspec {kernel!r} names one machine's kernel; expected the generic 'python3'")
    counts = []
    for i, cell in enumerate(nb["cells"]):
        extra = sorted(set(cell.get("metadata", {})) - ALLOWED_CELL_METADATA)
        if extra:
            problems.append(f"cell {i}: metadata {extra}")
        if cell["cell_type"] != "code" or not _code(cell).strip():
            continue
        counts.append(cell.get("execution_count"))
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: an error output ({out.get('ename')}: {out.get('evalue')})")
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                problems.append(
                    f"cell {i}: a widget-view output (a random model_id that churns on every run)"
                )
            if out.get("output_type") == "execute_result" and out.get("execution_count") != counts[-1]:
                problems.append(
                    f"cell {i}: output count {out.get('execution_count')} != cell count {counts[-1]}"
                )
    if counts != list(range(1, len(counts) + 1)):
        problems.append(
            f"execution counts {counts} are not 1..{len(counts)} (not one clean top-to-bottom run)"
        )
    assert not problems, (
        f"{_rel(ipynb)} is not scrubbed: rebuild it with "
        f"`.venv/bin/python tutorials/build.py {_rel(ipynb.with_suffix('.py'))}` (metadata only: "
        f"`.venv/bin/python tutorials/build.py --scrub-only {_rel(ipynb)}`)\n  " + "\n  ".join(problems)
    )


@notebooks
def test_c_notebook_has_checked_cells(ipynb):
    cells = _cells(ipynb)
    checked = [i for i, c in enumerate(cells) if CHECK_TAG in c.get("metadata", {}).get("tags", [])]
    assert checked, (
        f"{_rel(ipynb)}: no cell tagged {CHECK_TAG!r}; tag at least one cell that prints rounded numbers "
        "with a reason (an anchor, an optimum), so nbval checks more than 'it runs'"
    )
    silent = [i for i in checked if not cells[i].get("outputs")]
    assert not silent, f"{_rel(ipynb)}: checked cells {silent} have no stored output, so nbval checks nothing"
    assert cells[0]["cell_type"] == "markdown" and _code(cells[0]).lstrip().startswith("# "), (
        f"{_rel(ipynb)}: the first cell should be a markdown title followed by the notebook's goal"
    )


@notebooks
def test_d_notebook_imports_ncakit_and_no_loss_of_its_own(ipynb):
    code_lines = []
    for i, cell in enumerate(_cells(ipynb)):
        if cell["cell_type"] == "code":
            code_lines += [
                (i, line) for line in _code(cell).splitlines() if not line.lstrip().startswith("#")
            ]
    code = "\n".join(line for _, line in code_lines)
    assert re.search(r"^\s*(import ncakit\b|from ncakit[\s.])", code, re.MULTILINE), (
        f"{_rel(ipynb)} never imports ncakit: notebooks import the library, they never copy it"
    )
    found = [
        f"cell {i}: {why}: {line.strip()}"
        for i, line in code_lines
        for pattern, why in LOSS_FORMULA_PATTERNS.items()
        if re.search(pattern, line)
    ]
    assert not found, (
        f"{_rel(ipynb)} writes its own loss; call ncakit.losses (get_loss(name)) instead, and take "
        "gradients with autograd on it:\n  " + "\n  ".join(found)
    )


@notebooks
def test_readme_indexes_the_notebook(ipynb):
    readme = (TUTORIALS / "README.md").read_text()
    assert ipynb.name in readme, f"tutorials/README.md does not list {ipynb.name} in its index table"
