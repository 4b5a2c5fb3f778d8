"""`import ncakit` stays light: the toy track installs with torch + numpy (+ matplotlib) only."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("transformers", "datasets", "accelerate", "peft", "tokenizers", "trl", "matplotlib")


def test_import_ncakit_does_not_import_scale_packages():
    code = (
        "import sys, ncakit, ncakit.losses, ncakit.logprobs, ncakit.metrics\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import ncakit pulled in: {out.stdout.strip()}"


def _imports(module: str) -> set[str]:
    """Absolute imports of a module's source: top-level package names, ``ncakit.x`` kept whole."""
    import ast
    import importlib
    import pathlib

    tree = ast.parse(pathlib.Path(importlib.import_module(module).__file__).read_text())
    mods = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        mods |= {n if n.startswith("ncakit.") else n.split(".")[0] for n in names}
    return mods


STDLIB = {"__future__", "math", "numbers", "hashlib", "inspect", "collections", "dataclasses", "typing"}


@pytest.mark.parametrize(
    "module", ["ncakit.losses", "ncakit.registry", "ncakit.validation", "ncakit.variants", "ncakit.zoo"]
)
def test_losses_and_their_registry_import_only_torch(module):
    # ncakit.losses imports nothing but torch (and the standard library); the registry, the checks it
    # uses and the zoo are held to the same rule.
    allowed = STDLIB | {"torch", "ncakit.registry", "ncakit.validation", "ncakit.losses", "ncakit.variants"}
    assert _imports(module) - allowed == set(), _imports(module)


@pytest.mark.parametrize(
    "module",
    [
        "ncakit.losses",
        "ncakit.utils",
        "ncakit.registry",
        "ncakit.validation",
        "ncakit.variants",
        "ncakit.zoo",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted >= 1 and result.failed == 0


def test_rounded_gives_plain_floats_and_no_negative_zero():
    import torch

    from ncakit.utils import rounded

    got = rounded(torch.tensor([[1.23456, -0.0004], [2.0, -1.5]], requires_grad=True), digits=2)
    assert got == [[1.23, 0.0], [2.0, -1.5]]
    assert all(type(v) is float for row in got for v in row)
    assert str(rounded(-0.0)) == "0.0"  # -0.0 rounds to +0.0: printed cells must not flip sign
