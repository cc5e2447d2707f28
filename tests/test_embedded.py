"""The embedded server: shared by processes, never orphaned forever by a killed one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgqueue_sync.cli import embedded

pytestmark = pytest.mark.skipif(not embedded.is_available(), reason="needs the 'embedded' extra")

# Starts (or joins) the server, prints its URI, then holds it until stdin closes.
HOLDER = (
    "import sys; from pgqueue_sync.cli import embedded; "
    "print(embedded.embedded_dsn(sys.argv[1]), flush=True); sys.stdin.read()"
)


def _holder(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _uri(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith("postgresql://"), process.stderr.read() if process.stderr else line
    return line


def _server_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def _wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout}s")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_processes_share_one_server_and_a_killed_one_does_not_orphan_it(tmp_path: Path):
    data_dir = tmp_path / "pg"
    first, second = _holder(data_dir), None
    try:
        uri = _uri(first)
        second = _holder(data_dir)
        assert _uri(second) == uri  # one server, shared
        with psycopg.connect(uri) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        first.send_signal(signal.SIGKILL)  # no atexit: its pid stays registered
        first.wait(timeout=10)
        _stop(second)
        assert _server_running(data_dir), "the dead holder's stale pid keeps it up for now"
        registered = json.loads((data_dir / ".handle_pids.json").read_text())
        assert registered == [first.pid]

        third = _holder(data_dir)
        try:
            assert _uri(third) == uri
        finally:
            _stop(third)
        # The third process dropped the dead pid, so as the last holder it stopped the server.
        _wait_until(lambda: not _server_running(data_dir))
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if _server_running(data_dir):  # a failed assertion left it up: the last holder stops it
            cleaner = _holder(data_dir)
            _uri(cleaner)
            _stop(cleaner)
