"""Run a worker from a ``module:factory`` path, as ``pgq-sync run`` does.

The factory is called (with the arguments after ``--`` as one ``list[str]`` if
it takes a parameter) and must return a :class:`PgQueuer`, :class:`QueueManager`
or :class:`SchedulerManager`, or a context manager that yields one, for set-up
and tear-down of resources around the worker.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from .app import PgQueuer
from .errors import ConfigurationError, FactoryError, PgqException
from .options import duration
from .scheduler.manager import SchedulerManager
from .signals import handling_stop_signals
from .worker.manager import QueueManager

logger = logging.getLogger(__name__)

RESTART_DELAY = timedelta(seconds=5)
Runnable = PgQueuer | QueueManager | SchedulerManager
_RUNNABLE = (PgQueuer, QueueManager, SchedulerManager)
_EXPECTED = "a PgQueuer, QueueManager or SchedulerManager"
#: The only run() option a bare SchedulerManager takes; the rest are the worker's.
_SCHEDULER_OPTIONS = frozenset({"shutdown_timeout"})


def split_factory_path(path: str) -> tuple[str, str]:
    """``module:attribute`` as (module, attribute); :class:`ConfigurationError` otherwise."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"factory must look like 'module:function', got {path!r}")
    return module_name, attribute


def load_factory(path: str) -> Callable[..., Any]:
    """Import ``module:attribute`` (current directory first on ``sys.path``)."""
    module_name, attribute = split_factory_path(path)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and f"{module_name}.".startswith(f"{exc.name}."):
            raise ConfigurationError(
                f"cannot import module {module_name!r} (run from the directory that holds it, "
                "or fix PYTHONPATH)"
            ) from exc
        raise _factory_error("load", path, exc) from exc
    except Exception as exc:  # a syntax error or a failing import inside the user's module
        raise _factory_error("load", path, exc) from exc
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise ConfigurationError(f"{path} is not callable; point at a factory function")
    return factory  # type: ignore[no-any-return]


@contextlib.contextmanager
def build(factory: Callable[..., Any], args: Sequence[str]) -> Iterator[Runnable]:
    """Call the factory and yield the worker it makes, entering its context manager."""
    made = _call(factory, list(args))
    if isinstance(made, _RUNNABLE):
        yield made
        return
    if inspect.iscoroutine(made) or hasattr(made, "__aenter__"):
        if inspect.iscoroutine(made):
            made.close()
        raise ConfigurationError(
            "the factory is async; pgq-sync needs a plain function or a "
            f"@contextlib.contextmanager returning {_EXPECTED}"
        )
    if not hasattr(made, "__enter__"):
        raise ConfigurationError(
            f"the factory returned {type(made).__name__}; return {_EXPECTED}, "
            "or a context manager that yields one"
        )
    with contextlib.ExitStack() as stack:
        try:
            worker = stack.enter_context(made)
        except PgqException:
            raise
        except Exception as exc:
            raise _factory_error("build the worker with", _describe(factory), exc) from exc
        if not isinstance(worker, _RUNNABLE):
            raise ConfigurationError(
                f"the factory's context manager yielded {type(worker).__name__}; "
                f"yield {_EXPECTED}"
            )
        yield worker


def _factory_error(verb: str, what: str, exc: BaseException) -> FactoryError:
    detail = " ".join(str(exc).split())
    return FactoryError(f"could not {verb} {what}: {type(exc).__name__}" +
                        (f": {detail}" if detail else ""))


def _call(factory: Callable[..., Any], args: list[str]) -> Any:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not params and args:
        raise ConfigurationError(
            "arguments were given after '--' but the factory takes no parameter; "
            "add one (it receives the arguments as a list of strings)"
        )
    try:
        return factory() if params is not None and not params else factory(args)
    except PgqException:
        raise  # already says what is wrong (a bad option, an unreachable database)
    except Exception as exc:
        raise _factory_error("build the worker with", _describe(factory), exc) from exc


def _describe(factory: Callable[..., Any]) -> str:
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{module}:{name}" if module else name


def run(
    factory: str | Callable[..., Any],
    args: Sequence[str] = (),
    *,
    restart_on_failure: bool = False,
    restart_delay: timedelta | float = RESTART_DELAY,
    shutdown: threading.Event | None = None,
    metrics_port: int | None = None,
    on_built: Callable[[Runnable], None] | None = None,
    **run_options: Any,
) -> None:
    """Build the worker and run it until shutdown; ``run_options`` go to ``run()``.

    ``on_built`` is called with each worker the factory builds, before it runs
    (:mod:`pgqueue_sync.processes` attaches its recycling budget there).

    ``metrics_port`` serves ``/metrics`` and ``/healthz`` while it runs (needs
    the ``metrics`` extra; see :mod:`pgqueue_sync.metrics`).

    With ``restart_on_failure`` a failed cycle is rebuilt from the factory and
    restarted after ``restart_delay``; a requested shutdown never restarts.
    Raises :class:`ConfigurationError` for a bad factory.
    """
    fn = load_factory(factory) if isinstance(factory, str) else factory
    stop = shutdown or threading.Event()
    delay = duration("restart_delay", restart_delay).total_seconds()
    # Between cycles (while the factory builds the worker) a signal only stops the
    # loop; while a worker runs, its own handlers take the signals.
    with handling_stop_signals(lambda _signum: stop.set()):
        while not stop.is_set():
            try:
                _run_once(fn, args, stop, run_options, metrics_port, on_built)
                return
            except ConfigurationError:
                raise
            except PgqException as exc:
                if not restart_on_failure:
                    raise
                logger.error("worker failed (%s); restarting in %.1fs", exc, delay)
            except Exception:
                if not restart_on_failure:
                    raise
                logger.exception("worker failed; restarting in %.1fs", delay)
            stop.wait(delay)


def _run_once(
    factory: Callable[..., Any],
    args: Sequence[str],
    stop: threading.Event,
    options: Any,
    metrics_port: int | None = None,
    on_built: Callable[[Runnable], None] | None = None,
) -> None:
    with build(factory, args) as worker, _serve_metrics(worker, metrics_port):
        if on_built is not None:
            on_built(worker)
        if isinstance(worker, SchedulerManager):
            options = {k: v for k, v in options.items() if k in _SCHEDULER_OPTIONS}
        relay = threading.Thread(
            target=_relay, args=(stop, worker.shutdown), name="pgqueue_sync-shutdown-relay",
            daemon=True,
        )
        relay.start()
        try:
            worker.run(**options)
        finally:
            worker.shutdown.set()  # ends the relay thread
            relay.join(timeout=1.0)


@contextlib.contextmanager
def _serve_metrics(worker: Runnable, port: int | None) -> Iterator[None]:
    if port is None:
        yield
        return
    from .metrics import HEALTH_TIMEOUT, MetricsServer

    qm = worker.qm if isinstance(worker, PgQueuer) else worker
    pruned: Callable[[], Mapping[str, int]] | None = None
    if isinstance(qm, QueueManager) and qm.entrypoint_registry:
        def health() -> bool:
            return qm.healthy(HEALTH_TIMEOUT)

        def pruned() -> Mapping[str, int]:
            return qm.pruner.totals if qm.pruner is not None else {}
    else:  # a scheduler alone: alive while it has not been asked to stop
        def health() -> bool:
            return not worker.shutdown.is_set()
    server = MetricsServer(worker.queries, port=port, health=health, pruned=pruned).start()
    try:
        yield
    finally:
        server.stop()


def _relay(source: threading.Event, target: threading.Event) -> None:
    # Forward a supervisor-level stop (e.g. a signal between cycles) to the worker.
    while not target.is_set():
        if source.wait(0.5):
            target.set()
            return


