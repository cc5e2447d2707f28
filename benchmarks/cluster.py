"""A private PostgreSQL cluster with Debian's stock settings, for benchmarks.

    with private_cluster() as dsn:          # host=127.0.0.1 port=54xx user=root dbname=postgres
        ...

The shared test server runs with autovacuum off (and other CI settings); a
benchmark that must see what a stock server does (autovacuum on, its default
thresholds and naptime) gets its own cluster instead: created with Debian's
``pg_createcluster`` (postgresql-common) on a free port, started, given a
superuser role for the current OS user with trust authentication on
127.0.0.1, and stopped and dropped on the way out, also on Ctrl-C, SIGTERM or
an error. Clusters are named ``pgqs_bench_<random>``, so a leftover (after a
SIGKILL) is easy to spot in ``pg_lsclusters`` and to remove with
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
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import psycopg
from psycopg import sql

#: Ports tried for a new cluster (in random order).
PORTS = range(5450, 5500)
#: The environment variable ``common.server_dsn`` reads first.
BENCH_DSN_VAR = "PGQUEUE_SYNC_BENCH_DSN"
SOCKET_DIR = Path("/var/run/postgresql")
TOOLS = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters")
COMMAND_TIMEOUT = 120.0
READY_TIMEOUT = 60.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _unavailable() -> str | None:
    """Why a private cluster cannot be created here, or None."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not found: private clusters need Debian's postgresql-common"
    if os.geteuid() != 0:
        return "private clusters need root (pg_createcluster runs as the postgres user)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no 'postgres' system user to own a private cluster"
    if server_version() is None:
        return "no PostgreSQL server under /etc/postgresql and /usr/lib/postgresql"
    return None


def server_version() -> str | None:
    """The newest major version with both a config directory and server binaries."""
    try:
        names = os.listdir("/etc/postgresql")
    except OSError:
        return None
    found = [
        name for name in names
        if name.replace(".", "").isdigit()
        and Path(f"/usr/lib/postgresql/{name}/bin/postgres").exists()
    ]
    return max(found, key=lambda v: [int(p) for p in v.split(".")]) if found else None


def _ports_in_use() -> set[int]:
    """Ports of existing clusters, running or not (``pg_lsclusters -h``)."""
    done = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, check=False)
    ports = set()
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            ports.add(int(fields[2]))
    return ports


def _port_free(port: int) -> bool:
    if (SOCKET_DIR / f".s.PGSQL.{port}").exists():
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port of :data:`PORTS` that no cluster claims and nothing listens on."""
    taken = _ports_in_use()
    candidates = [p for p in PORTS if p not in taken]
    random.shuffle(candidates)
    for port in candidates:
        if _port_free(port):
            return port
    raise SystemExit(f"no free port in {PORTS.start}-{PORTS.stop - 1} for a private cluster")


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          check=False)


def _check(done: subprocess.CompletedProcess[str], what: str, log: Path | None = None) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {' '.join(done.args)}\n"
                           f"{done.stdout}{done.stderr}{_log_tail(log) if log else ''}")


def _wait_ready(dsn: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the private cluster was not ready after "
                                   f"{READY_TIMEOUT:.0f}s: {exc}\n{_log_tail(log)}") from exc
            time.sleep(0.1)


def _log_tail(log: Path) -> str:
    try:
        return "log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError as exc:
        return f"(no log: {exc})"


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
def private_cluster(*, port: int | None = None,
                    settings: dict[str, str] | None = None) -> Iterator[str]:
    """Create and start a private cluster with stock settings; yield its DSN; drop it.

    ``settings`` (name to value, written as ``name = value`` at the end of its
    ``postgresql.conf``, so quote strings: ``{"work_mem": "'64MB'"}``) overrides
    the stock configuration; by default nothing is changed. The DSN is
    ``host=127.0.0.1 port=PORT user=<current OS user> dbname=postgres`` (a
    superuser, trust authentication).
    """
    reason = _unavailable()
    if reason is not None:
        raise SystemExit(f"cannot create a private PostgreSQL cluster: {reason}")
    version = server_version()
    assert version is not None
    name = f"pgqs_bench_{uuid.uuid4().hex[:10]}"
    port = port or free_port()
    log = Path(f"/var/log/postgresql/postgresql-{version}-{name}.log")
    user = pwd.getpwuid(os.geteuid()).pw_name
    admin_dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    dsn = f"host=127.0.0.1 port={port} user={user} dbname=postgres"
    with _sigterm_raises():
        _say(f"private cluster {version}/{name} on port {port}: creating")
        try:
            _check(_run(["pg_createcluster", "--start-conf=manual", "-p", str(port), version,
                         name, "--", "--auth=trust"]), "pg_createcluster")
            if settings:
                lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
                with open(f"/etc/postgresql/{version}/{name}/postgresql.conf", "a",
                          encoding="utf-8") as conf:
                    conf.write(f"\n# pgqueue_sync benchmark settings\n{lines}")
            _check(_run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"]),
                   "pg_ctlcluster start", log)
            _wait_ready(admin_dsn, log)
            if user != "postgres":
                with psycopg.connect(admin_dsn, autocommit=True) as conn:
                    conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(
                        sql.Identifier(user)))
            _say(f"private cluster {version}/{name}: ready ({dsn})")
            yield dsn
        finally:
            _say(f"private cluster {version}/{name}: stopping and dropping")
            with _signals_ignored():
                done = _run(["pg_dropcluster", "--stop", version, name])
            if done.returncode != 0 and Path(f"/etc/postgresql/{version}/{name}").exists():
                _say(f"WARNING: could not drop {version}/{name} ({done.stderr.strip()}); "
                     f"remove it with: pg_dropcluster --stop {version} {name}")


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
def benchmark_server(private: bool, settings: dict[str, str] | None = None) -> Iterator[str]:
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
