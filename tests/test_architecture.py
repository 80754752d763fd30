"""The dependency rules of the design, checked by import-linter (`.importlinter` at the repository root).

The first test holds the real tree to the rules; the second proves each rule bites, by breaking it on
purpose in a copy of the tree, so a contract that silently matches nothing cannot pass for a kept one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.workers import ROOT

PACKAGES = ("broker", "web", "lti", "connectors", "grading_hooks", "tunnel")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# One forbidden import per contract, each in a new module of a copied tree.
VIOLATIONS = {
    "connectors/local/violation.py": "from broker import models\n",
    "connectors/vagrant/violation.py": "from connectors.local import labs\n",
    "broker/violation.py": "import flask\n",
    "grading_hooks/violation.py": "from broker import services\n",
    "web/violation.py": "from connectors.local import connector\n",
    "lti/violation.py": "import app\n",
    "tunnel/violation.py": "import flask\n",
}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_code_keeps_every_dependency_rule() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_rule_catches_a_violation(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".importlinter", tmp_path)
    shutil.copy(ROOT / "app.py", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    for path, source in VIOLATIONS.items():
        (tmp_path / path).write_text(source)

    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "Contracts: 0 kept, 7 broken." in result.stdout, result.stdout
    for needle in (
        "connectors is not allowed to import broker.models",
        "connectors.vagrant is not allowed to import connectors.local",
        "broker is not allowed to import flask",
        "grading_hooks is not allowed to import broker.services",
        "web is not allowed to import connectors",
        "lti is not allowed to import app",
        "tunnel is not allowed to import flask",
    ):
        assert needle in result.stdout
