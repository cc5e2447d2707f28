"""A real PgBouncer in transaction pooling mode in front of the test server.

:func:`pgbouncer` writes a configuration to a temporary directory (transaction
pool mode, ``auth_type = trust`` with the test user in an ``auth_file``, a
wildcard database entry pointing at the test server, a free port on
127.0.0.1), starts the ``pgbouncer`` binary as a subprocess (as the
``postgres`` user when run as root: PgBouncer refuses to run as root), waits
until it accepts connections and stops it afterwards.

Skips the test, with the reason, when the binary is missing (``apt-get install
pgbouncer``) or the test server is not reachable over TCP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: How long PgBouncer may take to accept connections after it starts (seconds).
START_TIMEOUT = 15.0
#: How long it may take to exit after SIGINT (then it is killed).
STOP_TIMEOUT = 10.0
#: Server connections per (database, user) pair: several, so consecutive
#: transactions of one client really land on different server connections.
DEFAULT_POOL_SIZE = 5
#: The user PgBouncer switches to when started as root.
RUN_AS = "postgres"


@dataclasses.dataclass(frozen=True)
class Bouncer:
    """A running PgBouncer: ``dsn(base)`` rewrites a test DSN to go through it."""

    host: str
    port: int
    directory: Path
    version: str

    def dsn(self, direct_dsn: str, **extra: Any) -> str:
        """``direct_dsn`` (same user and database) through PgBouncer."""
        return make_conninfo(direct_dsn, host=self.host, port=str(self.port), **extra)

    def log(self) -> str:
        """PgBouncer's log so far (for failure messages)."""
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def binary() -> str | None:
    """The ``pgbouncer`` executable, or ``None``."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(directory: Path, server: dict[str, str], port: int, pool_size: int) -> str:
    host = server.get("host") or "127.0.0.1"
    if host.startswith("/"):
        pytest.skip("the test server listens on a Unix socket only; PgBouncer tests need TCP")
    target = f"host={host} port={server.get('port') or '5432'}"
    return "\n".join([
        "[databases]",
        f"* = {target}",
        "",
        "[pgbouncer]",
        "pool_mode = transaction",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {directory / 'userlist.txt'}",
        f"logfile = {directory / 'pgbouncer.log'}",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        "max_client_conn = 500",
        "max_db_connections = 0",
        # psycopg sends none of these, but a client library might.
        "ignore_startup_parameters = extra_float_digits,options",
        "",
    ])


def _wait_until_accepting(dsn: str, process: subprocess.Popen[bytes], bouncer: Bouncer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{bouncer.log()}")
        try:
            with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            last = exc
        # A started process is polled: there is no event to wait on.
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not accept connections within {START_TIMEOUT}s "
                       f"({last}):\n{bouncer.log()}")


@contextlib.contextmanager
def pgbouncer(server_dsn: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Iterator[Bouncer]:
    """Run PgBouncer (transaction mode) in front of the server of ``server_dsn``."""
    exe = binary()
    if exe is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.splitlines()[:1]
    server = {k: str(v) for k, v in conninfo_to_dict(server_dsn).items() if v is not None}
    user = server.get("user") or pwd.getpwuid(os.getuid()).pw_name
    directory = Path(tempfile.mkdtemp(prefix="pgqs_bouncer_"))
    process: subprocess.Popen[bytes] | None = None
    try:
        port = _free_port()
        (directory / "userlist.txt").write_text(f'"{user}" ""\n')
        (directory / "pgbouncer.ini").write_text(_config(directory, server, port, pool_size))
        command = [exe, str(directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(RUN_AS)
            except KeyError:
                pytest.skip(f"running as root and there is no {RUN_AS!r} user for pgbouncer -u")
            os.chown(directory, account.pw_uid, account.pw_gid)
            for child in directory.iterdir():
                os.chown(child, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", RUN_AS]
        bouncer = Bouncer("127.0.0.1", port, directory, version[0] if version else "")
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        _wait_until_accepting(bouncer.dsn(server_dsn), process, bouncer)
        yield bouncer
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # PgBouncer: immediate shutdown
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
