"""A private PostgreSQL cluster with Debian's stock settings, for benchmarks.

    with private_cluster() as dsn:          # host=127.0.0.1 port=... user=postgres dbname=postgres
        ...

The shared test server runs with autovacuum off (and other CI settings); a
benchmark that must see what a stock server does (autovacuum on, its default
thresholds and naptime) gets its own cluster instead. It is the tests'
:class:`tests.faults.PrivateCluster` (``pg_createcluster`` on a free port, trust
authentication, the ``postgres`` superuser) with the stock ``postgresql.conf``
instead of the tests' settings, stopped and dropped on the way out, also on
Ctrl-C, SIGTERM or an error. Clusters are named ``pgqs_<random>``, so a leftover
(after a SIGKILL) is easy to spot in ``pg_lsclusters`` and to remove with
``pg_dropcluster --stop VERSION NAME``.

Needs root (clusters belong to the ``postgres`` system user) and
postgresql-common; without them :func:`private_cluster` raises ``SystemExit``
saying what is missing.

:func:`benchmark_server` is what the scripts use: a private cluster, made the
benchmark server (``PGQUEUE_SYNC_BENCH_DSN``, read by ``common.server_dsn``)
of this process and of the children it starts while inside, or the usual
server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from types import FrameType

import psycopg

# The repository root, so the tests' cluster toolkit is importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.faults import PrivateCluster, PrivateClusterError  # noqa: E402

BENCH_DSN_VAR = "PGQUEUE_SYNC_BENCH_DSN"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises ``KeyboardInterrupt`` in the main thread (as Ctrl-C does),
    so ``finally`` blocks run and the cluster is dropped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def private_cluster(*, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """Create and start a private cluster with stock settings; yield its DSN; drop it.

    ``settings`` (name to value, written as ``name = value`` at the end of its
    ``postgresql.conf``, so quote strings: ``{"work_mem": "'64MB'"}``) overrides
    the stock configuration; by default nothing is changed.
    """
    reason = PrivateCluster.available()
    if reason is not None:
        raise SystemExit(f"cannot create a private PostgreSQL cluster: {reason}")
    with _sigterm_raises():
        _say("private cluster: creating")
        cluster = PrivateCluster.create(config=dict(settings or {}))
        try:
            _say(f"{cluster!r}: ready ({cluster.dsn})")
            yield cluster.dsn
        finally:
            _say(f"{cluster!r}: stopping and dropping")
            with _signals_ignored():
                try:
                    cluster.remove()
                except PrivateClusterError as exc:
                    _say(f"WARNING: could not drop {cluster!r} ({exc}); remove it with: "
                         f"pg_dropcluster --stop {cluster.version} {cluster.name}")


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait (in the main thread) until the cluster is dropped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def benchmark_server(private: bool, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """The server DSN to benchmark against: with ``private``, a new private cluster that
    is also set as ``PGQUEUE_SYNC_BENCH_DSN`` while inside (so ``common.server_dsn`` and
    ``common.scratch_database`` use it, in this process and in the children it starts);
    otherwise ``common.server_dsn()``. ``settings`` go to :func:`private_cluster`."""
    if not private:
        from common import server_dsn

        yield server_dsn()
        return
    with private_cluster(settings=settings) as dsn:
        previous = os.environ.get(BENCH_DSN_VAR)
        os.environ[BENCH_DSN_VAR] = dsn
        try:
            yield dsn
        finally:
            if previous is None:
                os.environ.pop(BENCH_DSN_VAR, None)
            else:
                os.environ[BENCH_DSN_VAR] = previous


def settings_summary(dsn: str) -> str:
    """``PostgreSQL 15.x, autovacuum on, ...``: the settings a reader of a result needs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows: dict[str, str] = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (["server_version", "autovacuum", "autovacuum_naptime", "synchronous_commit",
              "fsync", "shared_buffers", "ssl"],),
        ).fetchall())
    return (f"PostgreSQL {rows.get('server_version', '?')}, autovacuum "
            f"{rows.get('autovacuum', '?')} (naptime {rows.get('autovacuum_naptime', '?')} s), "
            f"synchronous_commit {rows.get('synchronous_commit', '?')}, fsync "
            f"{rows.get('fsync', '?')}, shared_buffers {rows.get('shared_buffers', '?')} x 8kB, "
            f"ssl {rows.get('ssl', '?')}")
