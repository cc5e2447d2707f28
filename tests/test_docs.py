"""The documentation builds with --strict and every page renders its Markdown.

Runs docs/check_rendered.py in a subprocess; needs no database. Skipped unless
the ``docs`` extra is installed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[1] / "docs" / "check_rendered.py"

_MISSING = [name for name in ("mkdocs", "pymdownx") if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(
    bool(_MISSING),
    reason=f"docs extra not installed (no {', '.join(_MISSING)}): pip install -e '.[docs]'",
)
def test_docs_render() -> None:
    result = subprocess.run(
        [sys.executable, str(CHECK)], capture_output=True, text=True, timeout=100, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("docs OK:"), result.stdout
