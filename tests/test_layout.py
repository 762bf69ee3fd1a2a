"""The package map: imports flow one way (app -> models, data; training -> data, models, reports;
nothing but scripts and the benchmarks imports training)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fer

PACKAGE = Path(fer.__file__).parent

MAY_NOT_IMPORT = {
    "data": {"models", "training", "app", "reports", "bench"},
    "models": {"training", "app", "reports", "bench"},
    "reports": {"training", "app", "bench"},
    "app": {"training", "bench"},
    "training": {"app", "bench"},
}


def project_imports(path: Path) -> set[str]:
    """The `fer.<subpackage>` names that a module imports, at the top or inside functions."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        imported |= {name.split(".")[1] for name in names if name.startswith("fer.")}
    return imported


@pytest.mark.parametrize("package", sorted(MAY_NOT_IMPORT))
def test_a_package_imports_only_what_sits_below_it(package):
    for module in sorted((PACKAGE / package).glob("*.py")):
        forbidden = project_imports(module) & MAY_NOT_IMPORT[package]
        assert not forbidden, f"fer/{package}/{module.name} imports fer.{', fer.'.join(sorted(forbidden))}"


def test_the_prediction_app_loads_nothing_from_training():
    """A fresh interpreter that imports fer-predict's entry module and the recognizer."""
    code = ("import sys, fer.app.predict; from fer import Recognizer; "
            "print(' '.join(m for m in sys.modules if m.startswith('fer.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "fer.app.predict" in loaded and "fer.app.recognizer" in loaded
    assert not [m for m in loaded if m.startswith(("fer.training", "fer.bench"))], loaded


def test_few_modules_sit_directly_in_the_package():
    assert len(list(PACKAGE.glob("*.py"))) <= 5
