"""The documentation builds with --strict and every page renders its Markdown, and the
architecture page's example runs.

Runs docs/check_rendered.py in a subprocess (skipped unless the ``docs`` extra is
installed), and the example against a test database.
"""

from __future__ import annotations

import importlib.util
import re
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


def test_the_architecture_pages_example_runs_and_shows_the_trail(dsn: str) -> None:
    """docs/architecture.md's example, run as written against an installed schema:
    one job, and its queued, picked and successful log rows."""
    page = (CHECK.parent / "architecture.md").read_text()
    [example] = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    example = example.replace('"postgresql://localhost/postgres"', repr(dsn))
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ran job ")
    assert [line.split()[0] for line in lines[1:]] == ["queued", "picked", "successful"]
