"""The package's layers hold: `lint-imports` checks the contracts in setup.cfg
(each layer imports only the layers below it; only the CLI imports click and only
contrib.django imports Django; only worker/aio.py imports asyncio)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "lint-imports is missing: pip install -e '.[test]' installs import-linter"
    result = subprocess.run([lint, str(ROOT / "setup.cfg")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
