"""Several worker processes under one supervisor: ``pgq-sync run FACTORY --processes N``.

The supervisor (the ``pgq-sync`` process) starts ``N`` children, each a fresh
Python interpreter (``python -m pgqueue_sync.processes``, as multiprocessing's
``spawn`` would make) that imports the factory, builds its own worker and its
own connections, and runs it through :func:`pgqueue_sync.launcher.run`. The
supervisor never calls the factory and holds no database connection: nothing
it owns (connection, pool, thread, event loop) can reach a child.

* A child that dies is restarted, after a per-child backoff (:class:`Backoff`,
  capped at ``restart_delay``), with one log line naming its exit status or
  signal. A child that exits 0 on its own (drain mode, or a handler that set
  ``shutdown``) is not replaced; the supervisor ends once none is left.
* Recycling: a child past ``max_jobs_per_child`` jobs or ``max_memory_per_child``
  MB of resident memory stops claiming, lets its running jobs finish (as at a
  graceful shutdown) and exits with :data:`EXIT_RECYCLED`; the supervisor starts
  its replacement at once.
* Signals: the first SIGINT/SIGTERM asks every child to stop gracefully through
  its control pipe (not a signal, so a child that received the same signal
  from a terminal or a service manager does not count two); a second one
  sends SIGTERM to each child, which stops it at once (its running jobs go back
  to the queue); a third kills them.
* A child watches its control pipe: end of file means the supervisor is gone
  (even ``SIGKILL``), and the child shuts down gracefully instead of lingering.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from . import launcher
from .app import PgQueuer
from .backoff import INITIAL_DELAY, Backoff
from .errors import ConfigurationError
from .options import duration
from .recycling import Budget
from .signals import StopRequest, StopSignals
from .worker.manager import QueueManager

logger = logging.getLogger(__name__)

#: Exit status of a child that stopped after spending its budget (``EX_TEMPFAIL``):
#: replaced at once, without backoff.
EXIT_RECYCLED = 75
#: Exit status of a child whose factory path or options are wrong (as the CLI's
#: usage errors): a restart cannot help, so the supervisor stops every child.
EXIT_CONFIGURATION = 2
#: Exit status of a child whose worker failed (replaced after a backoff).
EXIT_FAILED = 1
#: How often the supervisor looks at its children (seconds); signals wake it at once.
POLL_INTERVAL = 0.2
#: A child that lived this long before dying starts its backoff afresh (seconds).
STABLE_AFTER = 30.0
#: How often a child's link thread looks at its control pipe (seconds).
LINK_POLL_INTERVAL = 1.0
#: Longest name the kernel keeps for a process (``comm``, what ``top`` shows).
COMM_LENGTH = 15

_CONFIG_ENV = "PGQUEUE_SYNC_CHILD_CONFIG"
_STOP = b"s"
_PR_SET_NAME = 15


def run(
    factory: str | Callable[..., Any],
    args: Sequence[str] = (),
    *,
    processes: int = 1,
    max_jobs_per_child: int | None = None,
    max_memory_per_child: int | None = None,
    restart_delay: timedelta | float = launcher.RESTART_DELAY,
    metrics_port: int | None = None,
    **run_options: Any,
) -> None:
    """Supervise ``processes`` worker processes until SIGINT/SIGTERM (or until every
    child has finished on its own, as in drain mode).

    ``factory`` is a ``module:function`` path (or a top-level function of an
    importable module); each child imports and calls it, so it must build every
    resource itself. ``run_options`` go to each child's ``run()`` and must be
    numbers, strings, booleans, ``None`` or timedeltas. With ``metrics_port``,
    child ``k`` (1-based) serves on ``metrics_port + k - 1``. Raises
    :class:`ConfigurationError` for bad arguments before any child starts, and
    when a child reports a configuration error (after stopping the others).
    """
    count = _positive("processes", processes, "--processes")
    max_jobs = _optional_positive("max_jobs_per_child", max_jobs_per_child,
                                  "--max-jobs-per-child")
    max_memory = _optional_positive("max_memory_per_child", max_memory_per_child,
                                    "--max-memory-per-child")
    delay = duration("restart_delay", restart_delay).total_seconds()
    if metrics_port and metrics_port + count - 1 > 65535:
        raise ConfigurationError(
            f"metrics_port {metrics_port} + {count} processes passes 65535; pick a lower port"
        )
    config = {
        "factory": factory_path(factory),
        "args": list(args),
        "count": count,
        "supervisor": os.getpid(),
        "max_jobs": max_jobs,
        "max_memory_mb": max_memory,
        "metrics_port": metrics_port,
        "run_options": {k: _plain(k, v) for k, v in run_options.items()},
        "sys_path": list(sys.path),
        "log": _log_config(),
    }
    group = _Supervisor(config, restart_delay=delay)
    group.run()


def factory_path(factory: str | Callable[..., Any]) -> str:
    """The ``module:function`` a child imports; :class:`ConfigurationError` if there is none."""
    if isinstance(factory, str):
        launcher.split_factory_path(factory)
        return factory
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or not name or "." in name or "<" in name:
        raise ConfigurationError(
            "worker processes import their factory by name: pass 'module:function' "
            "(a top-level function of an importable module, not __main__)"
        )
    return f"{module}:{name}"


def _positive(name: str, value: object, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number of at least 1, got {value!r} "
                                 f"(set {flag} to 1 or more)")
    return value


def _optional_positive(name: str, value: object, flag: str) -> int | None:
    return None if value is None else _positive(name, value, flag)


def _plain(name: str, value: Any) -> Any:
    """A run() option as JSON carries it to a child."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ConfigurationError(
        f"{name}={value!r} cannot be passed to a worker process; give a number, string, "
        "boolean or timedelta (build anything else inside the factory)"
    )


def _log_config() -> dict[str, Any] | None:
    """The supervisor's logging (level, format) for its children to copy; None if unset."""
    root = logging.getLogger()
    if not root.handlers:
        return None
    formats = [h.formatter._fmt for h in root.handlers if h.formatter is not None]
    return {"level": root.level, "format": formats[0] if formats else None}


def describe_exit(code: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


@dataclasses.dataclass
class _Child:
    """One slot of the group: its current process (if any) and its restart backoff."""

    index: int
    backoff: Backoff
    proc: subprocess.Popen[bytes] | None = None
    control: int | None = None  # write end of the child's control pipe
    started: float = 0.0
    due: float = 0.0  # time.monotonic() of the next start
    finished: bool = False  # exited 0 on its own: not replaced


class _Supervisor:
    def __init__(self, config: dict[str, Any], *, restart_delay: float) -> None:
        self.config = config
        self.count: int = config["count"]
        self.children = [
            _Child(i, Backoff(initial=INITIAL_DELAY, maximum=max(restart_delay, INITIAL_DELAY)))
            for i in range(1, self.count + 1)
        ]
        self.signals = 0
        self.acted = 0
        self.fatal: ConfigurationError | None = None
        self._wake = threading.Event()

    @property
    def stopping(self) -> bool:
        return self.acted > 0 or self.fatal is not None

    def run(self) -> None:
        set_process_title(f"pgq-sync supervisor ({self.count} workers) {self.config['factory']}",
                          comm="pgq-sync super")
        logger.info("supervisor %d: starting %d worker process(es) of %s", os.getpid(),
                    self.count, self.config["factory"])
        try:
            with StopSignals(self._on_stop_signal).installed():
                while self._step():
                    self._wake.wait(POLL_INTERVAL)
                    self._wake.clear()
        finally:
            # Normally all closed by now; if run() itself failed, the children see
            # their pipe close and stop gracefully instead of running on unsupervised.
            for child in self.children:
                if child.control is not None:
                    os.close(child.control)
                    child.control = None
        if self.fatal is not None:
            raise self.fatal
        logger.info("supervisor %d: every worker process has exited", os.getpid())

    def _on_stop_signal(self, request: StopRequest) -> None:
        # Runs between two bytecodes of the main thread: count it and wake the loop,
        # which acts on it (first: graceful; second: at once; more: kill).
        self.signals = request.number
        self._wake.set()

    def _step(self) -> bool:
        """One round: act on signals, reap, start what is due. False once it is over."""
        self._act_on_signals()
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None:
                code = child.proc.poll()
                if code is not None:
                    self._reaped(child, code, now)
        live = [c for c in self.children if c.proc is not None]
        if self.stopping:
            return bool(live)
        for child in self.children:
            if child.proc is None and not child.finished and child.due <= now:
                self._start(child)
        return any(c.proc is not None or not c.finished for c in self.children)

    def _act_on_signals(self) -> None:
        while self.acted < self.signals:
            self.acted += 1
            live = [c for c in self.children if c.proc is not None]
            if self.acted == 1:
                logger.info("supervisor %d: stopping %d worker process(es) gracefully (running "
                            "jobs finish; a second signal stops them at once)", os.getpid(),
                            len(live))
                for child in live:
                    self._ask_to_stop(child)
            elif self.acted == 2:
                logger.warning("supervisor %d: second signal: stopping worker processes at once "
                               "(running jobs go back to the queue)", os.getpid())
                self._kill_all(signal.SIGTERM)
            else:
                logger.warning("supervisor %d: another signal: killing worker processes",
                               os.getpid())
                self._kill_all(signal.SIGKILL)

    def _ask_to_stop(self, child: _Child) -> None:
        if child.control is None:
            return
        try:
            os.write(child.control, _STOP)
        except OSError:  # already gone: reaped in the next round
            pass

    def _kill_all(self, signum: signal.Signals) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    def _label(self, child: _Child) -> str:
        return f"worker process {child.index}/{self.count}"

    def _start(self, child: _Child) -> None:
        read_end, write_end = os.pipe()  # both non-inheritable: only pass_fds crosses
        config = {**self.config, "index": child.index, "control_fd": read_end}
        env = {**os.environ, _CONFIG_ENV: json.dumps(config)}
        argv = [sys.executable, "-m", __name__, f"worker {child.index}/{self.count}",
                self.config["factory"], f"supervisor={os.getpid()}"]
        try:
            # A session of its own: a terminal's Ctrl-C (sent to the whole foreground
            # group) reaches the supervisor only, which forwards it once.
            child.proc = subprocess.Popen(argv, env=env, pass_fds=(read_end,),
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            os.close(write_end)
            delay = child.backoff.failure()
            logger.error("could not start %s (%s); trying again in %.1fs", self._label(child),
                         exc, delay)
            child.due = time.monotonic() + delay
            return
        finally:
            os.close(read_end)
        child.control = write_end
        child.started = time.monotonic()
        logger.info("started %s: pid %d", self._label(child), child.proc.pid)

    def _reaped(self, child: _Child, code: int, now: float) -> None:
        assert child.proc is not None
        pid, lived = child.proc.pid, now - child.started
        child.proc = None
        if child.control is not None:
            os.close(child.control)
            child.control = None
        label = self._label(child)
        if code == EXIT_RECYCLED:
            logger.info("%s (pid %d) recycled after %.1fs; starting its replacement", label,
                        pid, lived)
            child.due = now
        elif self.stopping:
            logger.info("%s (pid %d) %s", label, pid, describe_exit(code))
        elif code == 0:
            logger.info("%s (pid %d) finished on its own (exit status 0); not replaced", label,
                        pid)
            child.finished = True
        elif code == EXIT_CONFIGURATION:
            logger.error("%s (pid %d) exited with status %d: a configuration error (logged "
                         "above); stopping every worker process", label, pid, code)
            self.fatal = ConfigurationError(
                f"{label} stopped on a configuration error (logged above); fix it and run again"
            )
            for other in self.children:
                self._ask_to_stop(other)
        else:
            if lived >= STABLE_AFTER:
                child.backoff.success()
            delay = child.backoff.failure()
            logger.error("%s (pid %d) %s after %.1fs; restarting it in %.1fs", label, pid,
                         describe_exit(code), lived, delay)
            child.due = now + delay


def set_process_title(title: str, *, comm: str | None = None) -> None:
    """Name this process for ``ps``/``top``: the kernel's short name (``comm``, at most 15
    bytes, Linux) and, if the optional ``setproctitle`` package is installed, the
    whole command line. Best effort: never raises."""
    try:  # the optional extra 'proctitle' (no type hints: looked up by name)
        module = importlib.import_module("setproctitle")
    except ImportError:
        pass
    else:
        module.setproctitle(title)
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        name = (comm or title).encode()[:COMM_LENGTH]
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
        except (OSError, AttributeError) as exc:
            logger.debug("could not set the process name: %s", exc)


def _watch_supervisor(control_fd: int, stops: list[threading.Event]) -> None:
    """Stop the worker gracefully when the supervisor asks, or when it is gone (EOF).

    ``stops[0]`` is the run's own stop event; the worker's ``shutdown`` joins the
    list once built, and is set directly, so that a later SIGTERM from the
    supervisor counts as the worker's second signal at once."""
    while not stops[0].is_set():
        ready, _, _ = select.select([control_fd], [], [], LINK_POLL_INTERVAL)
        if not ready:
            continue
        if not os.read(control_fd, 64):
            logger.warning("the supervisor is gone; finishing running jobs, then exiting")
        for event in list(stops):
            event.set()
        return


def _child_main() -> int:
    raw = os.environ.pop(_CONFIG_ENV, None)
    if raw is None:
        print("this module is run by 'pgq-sync run --processes N', not directly",
              file=sys.stderr)
        return EXIT_CONFIGURATION
    config = json.loads(raw)
    index, count, parent = config["index"], config["count"], config["supervisor"]
    label = f"worker {index}/{count}"
    parent_path: list[str] = config["sys_path"]
    sys.path[:] = parent_path + [p for p in sys.path if p not in parent_path]
    if config["log"] is not None:
        fmt = config["log"]["format"] or logging.BASIC_FORMAT
        fmt = fmt.replace("%(message)s", f"[{label}] %(message)s", 1)
        logging.basicConfig(level=config["log"]["level"], format=fmt, stream=sys.stderr)
    title = f"pgq-sync {label} {config['factory']} (supervisor {parent})"
    set_process_title(title, comm=f"pgq-sync {index}/{count}")
    stop = threading.Event()
    stops = [stop]
    threading.Thread(target=_watch_supervisor, args=(config["control_fd"], stops),
                     name="pgqueue_sync-supervisor-link", daemon=True).start()
    budget = Budget(max_jobs=config["max_jobs"], max_memory_mb=config["max_memory_mb"])

    def attach(worker: launcher.Runnable) -> None:
        stops.append(worker.shutdown)
        if stop.is_set():
            worker.shutdown.set()
        qm = worker.qm if isinstance(worker, PgQueuer) else worker
        if not isinstance(qm, QueueManager):
            if budget.limited:
                logger.warning("a scheduler alone runs no jobs: the recycling limits do not apply")
            return
        if budget.limited:
            qm.after_job = budget
        set_process_title(f"{title} [{str(qm.queue_manager_id)[:8]}]",
                          comm=f"pgq-sync {index}/{count}")
        logger.info("pid %d (supervisor %d) runs worker %s", os.getpid(), parent,
                    qm.queue_manager_id)

    port = config["metrics_port"]
    try:
        launcher.run(config["factory"], config["args"], shutdown=stop,
                       metrics_port=port + index - 1 if port else port, on_built=attach,
                       **config["run_options"])
    except ConfigurationError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIGURATION
    except Exception:
        logger.exception("the worker failed")
        return EXIT_FAILED
    if budget.reason is not None:
        logger.info("recycled: %s", budget.reason)
        return EXIT_RECYCLED
    return 0


if __name__ == "__main__":
    # Run as pgqueue_sync.processes (its logger's name), not as a second copy in __main__.
    from pgqueue_sync.processes import _child_main as main

    sys.exit(main())
