"""Screenshots as test artefacts: every PNG a browser test saved in its `tmp_path` is copied, after the
test, to `test-artefacts/<module>/<test>/` at the repository root (ignored by git), where CI and people
find them. pytest keeps only its last few temporary directories, and under names nobody can guess."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import pytest

ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts"


@pytest.fixture(autouse=True)
def keep_screenshots(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    yield
    shots = sorted(tmp_path.rglob("*.png"))
    if not shots:
        return
    module = Path(request.node.fspath).stem
    target = ARTEFACTS / module / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for shot in shots:
        shutil.copy2(shot, target / shot.name)
