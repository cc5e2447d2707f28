"""Build the documentation and look for Markdown that did not render.

Usage: ``python docs/check_rendered.py [--site-dir DIR]``

Runs ``mkdocs build --strict`` (a temporary directory unless ``--site-dir``
names one to keep), then reads every generated HTML page and reports:

* a ``<p>`` whose text (code spans aside) holds a fence marker (three
  backticks or tildes): a fenced block that became a paragraph;
* a ``<code>`` whose content starts with a fence marker, or an inline
  ``<code>`` whose first line is a language name alone (```` ```yaml ````
  read as a code span leaves ``yaml`` and a newline at its start);
* a ``<p>`` line that starts with a list marker (``* ``, ``- ``, ``1. ``):
  list items run into a paragraph, as after a block that broke out of its item;
* a literal backslash-pipe outside ``<pre>`` blocks: a table cell written
  for GitHub (``\\|`` inside a code span), which Python-Markdown keeps as is.

Exit status 0 with a one-line summary when the pages are clean, 1 with one
line per finding (page and snippet), 2 when the build itself fails.
Needs the ``docs`` extra (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
# mkdocs.yml sets docs_dir to its own directory, which mkdocs accepts only when
# the config path it is given is relative (its check compares path strings), as
# in tox's `mkdocs build -f docs/mkdocs.yml`: build the same way, from the root.
PROJECT_DIR = DOCS_DIR.parent
CONFIG = DOCS_DIR.relative_to(PROJECT_DIR) / "mkdocs.yml"

FENCE_MARKER = re.compile(r"`{3,}|~{3,}")
FENCE_AT_START = re.compile(r"\s*(?:`{3,}|~{3,})")
# The first line of a code span left by a broken fence: a language name alone.
LANGUAGE_TAG_AT_START = re.compile(r"\s*([A-Za-z][\w+#.-]*)[ \t]*\n")
# Fence languages worth recognising (lower case); a known name keeps a code span
# that merely wraps after its first word (`pgq-sync\n  verify`) from counting.
# fmt: off
LANGUAGES = frozenset({
    "bash", "sh", "shell", "console", "zsh", "powershell", "bat", "text", "txt",
    "plain", "output", "python", "py", "pycon", "pytb", "yaml", "yml", "ini", "cfg",
    "conf", "toml", "json", "sql", "postgresql", "psql", "html", "xml", "css", "js",
    "javascript", "ts", "typescript", "django", "jinja", "diff", "dockerfile",
    "nginx", "systemd", "makefile", "markdown", "md", "rst", "csv", "go", "rust",
})
# fmt: on
# A paragraph line that starts like a list item: a list that did not start (no
# blank line before it, or an item cut off by a block it failed to hold).
LIST_MARKER_LINE = re.compile(r"^[ \t]*(?:[*+-]|\d+\.)[ \t]+\S", re.MULTILINE)
ESCAPED_PIPE = "\\|"
CODE_STANDIN = "\x00"  # a code span within a paragraph's text: not a marker
SNIPPET_CHARS = 80


@dataclass(frozen=True)
class Finding:
    """One piece of Markdown that reached the HTML unrendered."""

    page: str
    problem: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.page}: {self.problem}: {self.snippet}"


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > SNIPPET_CHARS:
        return flat[: SNIPPET_CHARS - 3] + "..."
    return flat


def _starts_with_language(text: str) -> bool:
    tag = LANGUAGE_TAG_AT_START.match(text)
    return tag is not None and tag.group(1).lower() in LANGUAGES


class _PageScanner(HTMLParser):
    """Collects paragraph text, code content and loose text of one page."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.findings: list[Finding] = []
        self._skip = 0  # inside <script> or <style>
        self._pre = 0
        self._paragraphs: list[list[str]] = []
        self._codes: list[tuple[bool, list[str]]] = []  # (inside <pre>, text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "pre":
            self._pre += 1
        elif tag == "p":
            self._paragraphs.append([])
        elif tag == "code":
            self._codes.append((self._pre > 0, []))
            if self._paragraphs:  # stands for the span in the paragraph's text
                self._paragraphs[-1].append(CODE_STANDIN)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag == "p" and self._paragraphs:
            self._check_paragraph("".join(self._paragraphs.pop()))
        elif tag == "code" and self._codes:
            in_pre, parts = self._codes.pop()
            self._check_code("".join(parts), in_pre)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._codes:
            self._codes[-1][1].append(data)
        elif self._paragraphs:
            self._paragraphs[-1].append(data)
        if ESCAPED_PIPE in data and not self._pre:
            start = max(0, data.index(ESCAPED_PIPE) - SNIPPET_CHARS // 2)
            self._add("literal \\| in text", data[start:])

    def close(self) -> None:
        super().close()
        for parts in self._paragraphs:  # a <p> left open by the page
            self._check_paragraph("".join(parts))
        self._paragraphs.clear()

    def _check_paragraph(self, text: str) -> None:
        fence = FENCE_MARKER.search(text)
        if fence:
            snippet = text[fence.start() :].replace(CODE_STANDIN, "<code>")
            self._add("code fence marker in a paragraph", snippet)
        bullet = LIST_MARKER_LINE.search(text)
        if bullet:
            snippet = text[bullet.start() :].replace(CODE_STANDIN, "<code>")
            self._add("list marker inside a paragraph", snippet)

    def _check_code(self, text: str, in_pre: bool) -> None:
        if FENCE_AT_START.match(text):
            self._add("code starts with a fence marker", text)
        elif not in_pre and _starts_with_language(text):
            self._add("inline code starts with a language tag", text)

    def _add(self, problem: str, text: str) -> None:
        self.findings.append(Finding(self.page, problem, _snippet(text)))


def scan_page(path: Path, site: Path) -> list[Finding]:
    """Findings of one generated HTML page."""
    scanner = _PageScanner(path.relative_to(site).as_posix())
    scanner.feed(path.read_text(encoding="utf-8"))
    scanner.close()
    return scanner.findings


def build_site(site: Path) -> subprocess.CompletedProcess[str]:
    """Run ``mkdocs build --strict`` into ``site`` with this interpreter."""
    # No --quiet: it raises the log level above WARNING, and --strict only
    # counts the warnings that get logged.
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    command += ["-f", str(CONFIG), "-d", str(site)]
    return subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, check=False)


def check(site: Path) -> int:
    """Build into ``site``, scan it, print the outcome; return the exit status."""
    started = time.monotonic()
    built = build_site(site)
    if built.returncode != 0:
        sys.stderr.write(built.stdout + built.stderr)
        print(f"mkdocs build --strict failed (exit {built.returncode})", file=sys.stderr)
        return 2
    pages = sorted(site.rglob("*.html"))
    findings = [finding for page in pages for finding in scan_page(page, site)]
    elapsed = time.monotonic() - started
    if findings:
        for finding in findings:
            print(finding)
        print(f"{len(findings)} unrendered Markdown finding(s) in {len(pages)} pages")
        return 1
    summary = f"{len(pages)} pages built with --strict, no unrendered Markdown"
    print(f"docs OK: {summary} ({elapsed:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--site-dir",
        type=Path,
        help="build here and keep the pages (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.site_dir is not None:
        return check(args.site_dir.resolve())
    with tempfile.TemporaryDirectory(prefix="pgqs_docs_") as tmp:
        return check(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
