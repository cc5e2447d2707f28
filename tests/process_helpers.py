"""A worker process started by a test: its log, signals, bounded waits for its exit."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from .worker_helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
#: The line qm.QueueManager._run logs once its threads (listener included) are up.
STARTED = re.compile(r"worker [0-9a-f-]{36} started")
#: How long a child may take to import, connect and start its threads.
BOOT_TIMEOUT = 20.0
#: After terminate(), how long a child gets before it is killed (test teardown).
STOP_GRACE = 5.0


class WorkerProcess:
    """A worker process started by a test (``name`` in messages); its output goes to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str],
                 *, new_session: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until the worker logs that it runs; fail at once if it died."""
        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log()}"
                )
            return bool(STARTED.search(self.log()))

        wait_for(started, timeout=timeout, interval=0.05)

    def send(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """The exit status; fails (with the worker's log) if it runs longer than ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s:\n{self.log()}"
            ) from None

    def assert_running_for(self, seconds: float) -> None:
        """Fail if the process exits within ``seconds`` (a bounded negative check)."""
        try:
            code = self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return
        raise AssertionError(f"{self.name} exited early with {code}:\n{self.log()}")

    def stop(self) -> None:
        """Terminate, then kill after :data:`STOP_GRACE`; always reaps the child."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_GRACE)
