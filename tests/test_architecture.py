"""The house rules of docs/design.md ("Layout"), kept by tests rather than by reviewers."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "qmed"


def _modules():
    return sorted(p for p in SRC.rglob("*.py") if "nnunet_trainers" not in p.parts)


def test_layers_contract_holds():
    """import-linter's layers and acyclic-siblings contracts in pyproject.toml: no upward import, no cycle."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: pip install -e '.[test]' installs import-linter")
    res = subprocess.run(
        [exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "2 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_passes(args):
    """ruff's lint and format check with pyproject.toml's settings (120 columns) over the code."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff not found: pip install -e '.[test]' installs it")
    res = subprocess.run(
        [exe, *args, "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qmed":
                offenders += [
                    f"{path.relative_to(SRC)}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert offenders == []


def test_no_relative_imports():
    """Absolute imports only, so a file's imports read the same wherever it moves."""
    offenders = [
        str(p.relative_to(SRC))
        for p in _modules()
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(n, ast.ImportFrom) and n.level
    ]
    assert offenders == []


def test_only_the_foundation_modules_sit_at_the_top():
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert top == ["__init__.py", "config.py", "errors.py", "runtime.py"]
