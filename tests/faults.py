"""Fault injection for tests: a TCP proxy that drops connections or lost replies,
backend termination, and throwaway PostgreSQL clusters that can be restarted or killed.

* :class:`PgProxy` sits between a client and PostgreSQL. It can cut every open
  connection (:meth:`PgProxy.cut_all`), refuse new ones for a while
  (:meth:`PgProxy.refuse`), or let one statement run and commit but lose its reply
  (:meth:`PgProxy.swallow_next_reply`).
* :func:`terminate_backends` kills the server-side sessions of a database.
* :class:`PrivateCluster` is a cluster of its own (Debian ``postgresql-common``
  tools) for tests that stop, restart or crash the server.

Everything here is bounded by timeouts; every thread is a named daemon thread
joined on stop; every socket is closed on stop.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import pwd
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "PgProxy",
    "PrivateCluster",
    "PrivateClusterError",
    "terminate_backends",
]

# --------------------------------------------------------------------------- proxy

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102

_SELECT_TIMEOUT = 0.1  # how often idle threads look at their stop flags
_BUFFER_LIMIT = 4 * 1024 * 1024  # stop reading a side while the other is this far behind
_JOIN_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 5.0
_FLUSH_TIMEOUT = 2.0

# Client messages after which the server sends exactly one ReadyForQuery ('Z').
_SYNC_KINDS = frozenset({"startup", "Q", "S", "F"})
# Extended-protocol client messages and the server message that completes each one.
_COMPLETED_BY = {"P": b"1", "B": b"2", "C": b"3", "D": b"Tn", "E": b"CIs"}


@dataclass
class _Pending:
    """A client message still waiting for (the end of) its reply."""

    seq: int
    kind: str

    @property
    def syncs(self) -> bool:
        return self.kind in _SYNC_KINDS


@dataclass
class _Swallow:
    marker: bytes
    event: threading.Event


def _cstring(data: bytes | bytearray, start: int) -> tuple[bytes, int]:
    end = data.find(b"\0", start)
    if end < 0:
        return bytes(data[start:]), len(data)
    return bytes(data[start:end]), end + 1


class _Wire:
    """Light PostgreSQL v3 protocol tracking of one client/server pair.

    Client bytes are parsed to learn which messages await a reply (a FIFO of
    :class:`_Pending`); server messages are matched against that FIFO, so the
    replies of the marked statement (and of everything the client sent after it)
    can be told apart from earlier replies and discarded, up to and including the
    ReadyForQuery that closes the marked statement's Sync/Query.
    """

    def __init__(self, proxy: PgProxy) -> None:
        self._proxy = proxy
        self._seq = itertools.count()
        self.pending: collections.deque[_Pending] = collections.deque()
        # client -> server parsing state
        self._startup = True
        self._passthrough = False  # cancel request: nothing more to parse
        self._cbuf = bytearray()  # header or whole message being collected
        self._cskip = 0  # body bytes of the current client message still to pass
        # server -> client parsing state
        self._sheader = bytearray()
        self._sskip = 0
        self._sforward = True
        # named prepared statements of this session: name -> query text
        self._statements: dict[bytes, bytes] = {}
        # swallow state
        self.swallow: _Swallow | None = None
        self.marked_seq: int | None = None
        self._final = False  # the message being read is the last one to discard
        self.swallowed = False  # the final ReadyForQuery has been discarded

    # ----------------------------------------------------------- client side
    def from_client(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed client bytes; return (bytes for the server, bytes back to the client)."""
        if self._passthrough:
            return data, b""
        to_server = bytearray()
        to_client = bytearray()
        view = memoryview(data)
        while view:
            if self._cskip:
                n = min(self._cskip, len(view))
                to_server += view[:n]
                view = view[n:]
                self._cskip -= n
                continue
            if self._startup:
                view = self._client_startup(view, to_server, to_client)
            else:
                view = self._client_message(view, to_server)
            if self._passthrough:
                to_server += view
                break
        return bytes(to_server), bytes(to_client)

    def _collect(self, view: memoryview, size: int) -> memoryview:
        need = size - len(self._cbuf)
        self._cbuf += view[:need]
        return view[need:]

    def _client_startup(
        self, view: memoryview, to_server: bytearray, to_client: bytearray
    ) -> memoryview:
        view = self._collect(view, 4)
        if len(self._cbuf) < 4:
            return view
        (length,) = struct.unpack_from("!i", self._cbuf)
        if length < 8 or length > 1 << 20:
            self._passthrough = True  # not a protocol we understand
            to_server += self._cbuf
            self._cbuf.clear()
            return view
        view = self._collect(view, length)
        if len(self._cbuf) < length:
            return view
        packet = bytes(self._cbuf)
        self._cbuf.clear()
        (code,) = struct.unpack_from("!i", packet, 4)
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            to_client += b"N"  # no encryption; the client then sends its startup packet
            return view
        to_server += packet
        if code == _CANCEL_REQUEST:
            self._passthrough = True
            return view
        self._startup = False
        self.pending.append(_Pending(next(self._seq), "startup"))
        return view

    def _client_message(self, view: memoryview, to_server: bytearray) -> memoryview:
        view = self._collect(view, 5)
        if len(self._cbuf) < 5:
            return view
        kind = chr(self._cbuf[0])
        (length,) = struct.unpack_from("!i", self._cbuf, 1)
        if kind not in "QPB":
            # Only the header matters: pass the body through as it comes.
            to_server += self._cbuf
            self._cbuf.clear()
            self._cskip = max(length - 4, 0)
            self._client_sent(kind, b"")
            return view
        view = self._collect(view, 1 + length)
        if len(self._cbuf) < 1 + length:
            return view
        message = bytes(self._cbuf)
        self._cbuf.clear()
        self._client_sent(kind, message[5:])
        to_server += message
        return view

    def _client_sent(self, kind: str, body: bytes) -> None:
        if kind not in _SYNC_KINDS and kind not in _COMPLETED_BY:
            return  # Flush, Terminate, copy data, password...: no reply of their own
        item = _Pending(next(self._seq), kind)
        self.pending.append(item)
        text = self._statement_text(kind, body)
        if text is not None and self.marked_seq is None:
            swallow = self._proxy._claim_swallow(text)
            if swallow is not None:
                self.swallow = swallow
                self.marked_seq = item.seq

    def _statement_text(self, kind: str, body: bytes) -> bytes | None:
        """The SQL a Query/Parse/Bind message will run now, if it runs any."""
        if kind == "Q":
            return body
        if kind == "P":
            name, offset = _cstring(body, 0)
            query, _ = _cstring(body, offset)
            if name:
                # A named statement runs only when bound (psycopg prepares with its
                # own Sync): remember it and mark the Bind that executes it.
                self._statements[name] = query
                return None
            return query
        if kind == "B":
            _, offset = _cstring(body, 0)
            name, _ = _cstring(body, offset)
            return self._statements.get(name) if name else None
        return None

    # ----------------------------------------------------------- server side
    def from_server(self, data: bytes) -> bytes:
        """Feed server bytes; return what must reach the client."""
        out = bytearray()
        view = memoryview(data)
        while view and not self.swallowed:
            if self._sskip:
                n = min(self._sskip, len(view))
                if self._sforward:
                    out += view[:n]
                view = view[n:]
                self._sskip -= n
            else:
                need = 5 - len(self._sheader)
                self._sheader += view[:need]
                view = view[need:]
                if len(self._sheader) < 5:
                    break
                header = bytes(self._sheader)
                self._sheader.clear()
                (length,) = struct.unpack_from("!i", header, 1)
                self._sforward = self._server_message(header[0:1])
                self._sskip = max(length - 4, 0)
                if self._sforward:
                    out += header
            if not self._sskip and self._final:
                # The ReadyForQuery closing the marked statement is complete.
                self.swallowed = True
        return bytes(out)

    def _server_message(self, kind: bytes) -> bool:
        """Account for a server message; True when it is to be forwarded."""
        head = self.pending[0] if self.pending else None
        discard = self.marked_seq is not None and head is not None and head.seq >= self.marked_seq
        if kind == b"Z":
            while self.pending and not self.pending.popleft().syncs:
                pass
            if discard:
                self._final = True
        elif kind == b"E":
            # An error ends the current message; the server skips the rest up to Sync.
            if head is not None and not head.syncs:
                while self.pending and not self.pending[0].syncs:
                    self.pending.popleft()
        elif head is not None and kind in _COMPLETED_BY.get(head.kind, b""):
            self.pending.popleft()
        return not discard


class _Pair:
    """One client connection and its server connection, served by one thread."""

    def __init__(self, proxy: PgProxy, client: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self.number = number
        self.cut = False
        self.closed = False
        self._lock = threading.Lock()
        self.wire = _Wire(proxy)
        self.thread = threading.Thread(
            target=self._run,
            name=f"pgproxy-{proxy.port}-conn-{number}",
            daemon=True,
        )

    # Called from other threads.
    def interrupt(self) -> None:
        """Ask the pair's thread to cut both connections now."""
        with self._lock:
            self.cut = True
            for sock in (self.client, self.server):
                if sock is not None and sock.fileno() >= 0:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self, abort: bool = False) -> None:
        with self._lock:
            self.closed = True
            for sock in (self.client, self.server):
                if sock is None or sock.fileno() < 0:
                    continue
                if abort:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                with contextlib.suppress(OSError):
                    sock.close()

    # The pair's own thread.
    def _run(self) -> None:
        swallowed = False
        try:
            server = self.proxy._connect_upstream()
            with self._lock:
                self.server = server
            if not self.cut:
                swallowed = self._pump(server)
        except Exception:  # a broken pair must never fail the test run
            pass
        finally:
            self.close(abort=self.cut or self.proxy._stopping.is_set())
            self.proxy._pair_done(self)
            if swallowed and self.wire.swallow is not None:
                self.wire.swallow.event.set()

    def _pump(self, server: socket.socket) -> bool:
        """Forward until either side closes, the pair is cut, or a swallow completes."""
        client = self.client
        client.setblocking(False)
        server.setblocking(False)
        to_server = bytearray()
        to_client = bytearray()
        wire = self.wire
        while not self.cut and not self.proxy._stopping.is_set():
            readers = []
            if len(to_client) < _BUFFER_LIMIT:
                readers.append(client)
            if len(to_server) < _BUFFER_LIMIT:
                readers.append(server)
            writers = ([server] if to_server else []) + ([client] if to_client else [])
            readable, writable = _select(readers, writers)
            for sock in writable:
                buffer = to_server if sock is server else to_client
                sent = _send(sock, buffer)
                if sent < 0:
                    return False
                del buffer[:sent]
            for sock in readable:
                data = _recv(sock)
                if data is None:
                    continue
                if not data:  # EOF or error: pass on what is left, then close
                    if sock is server:
                        _flush(client, to_client, self)
                    else:
                        _flush(server, to_server, self)
                    return False
                if sock is client:
                    forward, answer = wire.from_client(data)
                    to_server += forward
                    to_client += answer
                else:
                    to_client += wire.from_server(data)
                    if wire.swallowed:
                        # The statement committed; its reply is gone. Deliver what
                        # came before it, then drop the connection.
                        _flush(client, to_client, self)
                        return True
        return False


def _select(
    readers: list[socket.socket], writers: list[socket.socket]
) -> tuple[list[socket.socket], list[socket.socket]]:
    readable, writable, _ = select.select(readers, writers, [], _SELECT_TIMEOUT)
    return readable, writable


def _recv(sock: socket.socket) -> bytes | None:
    """Bytes read; b"" on EOF or error; None when nothing is available yet."""
    try:
        return sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _send(sock: socket.socket, buffer: bytearray) -> int:
    try:
        return sock.send(buffer)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return -1


def _flush(sock: socket.socket, buffer: bytearray, pair: _Pair) -> None:
    """Best effort: send what is buffered for ``sock`` within a short time."""
    deadline = time.monotonic() + _FLUSH_TIMEOUT
    while buffer and not pair.cut and time.monotonic() < deadline:
        _, writable = _select([], [sock])
        if writable:
            sent = _send(sock, buffer)
            if sent < 0:
                return
            del buffer[:sent]


class PgProxy:
    """A threaded TCP proxy on 127.0.0.1 in front of a PostgreSQL server.

    ``host`` may also be a Unix-socket directory (a path starting with ``/``), in
    which case the proxy connects to ``<host>/.s.PGSQL.<port>``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target_host = host
        self.target_port = int(port)
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count(1)
        self._refusing = False
        self._refuse_until: float | None = None
        self._swallows: list[_Swallow] = []

    # ------------------------------------------------------------ lifecycle
    def start(self) -> PgProxy:
        if self._listener is not None:
            raise RuntimeError("proxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"pgproxy-{self.port}-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every connection, join every thread, close every socket."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT)
        with self._lock:
            pairs = list(self._pairs)
            threads = list(self._threads)
        for pair in pairs:
            pair.interrupt()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        for pair in pairs:
            pair.close(abort=True)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            self._pairs.clear()
            self._threads = [t for t in self._threads if t.is_alive()]
            leftovers = [t.name for t in self._threads]
        if leftovers:
            raise RuntimeError(f"proxy threads did not stop: {leftovers}")

    def __enter__(self) -> PgProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<PgProxy 127.0.0.1:{self.port} -> {self.target_host}:{self.target_port}"
            f" open={self.open_connections()} accepted={self.accepted} refused={self.refused}>"
        )

    # ------------------------------------------------------------ addressing
    def dsn(self, base_dsn: str) -> str:
        """``base_dsn`` (key=value or URL) pointed at the proxy, with SSL off."""
        params: dict[str, Any] = dict(conninfo_to_dict(base_dsn))
        params.pop("hostaddr", None)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable")
        return make_conninfo("", **params)

    # ------------------------------------------------------------ faults
    def cut_all(self) -> int:
        """Abruptly close every open connection pair; return how many were cut."""
        with self._lock:
            pairs = [pair for pair in self._pairs if not pair.closed]
        for pair in pairs:
            pair.interrupt()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for pair in pairs:
            pair.thread.join(max(deadline - time.monotonic(), 0.1))
        return len(pairs)

    def refuse(self, seconds: float | None = None) -> None:
        """Close new client connections right after accepting them.

        With ``seconds``, refusing ends by itself after that long; otherwise it
        lasts until :meth:`accept`.
        """
        with self._lock:
            self._refusing = True
            self._refuse_until = None if seconds is None else time.monotonic() + seconds

    def accept(self) -> None:
        """Accept new connections again."""
        with self._lock:
            self._refusing = False
            self._refuse_until = None

    def refuse_and_cut(self, seconds: float | None = None) -> int:
        """Refuse new connections (see :meth:`refuse`) and cut the open ones."""
        self.refuse(seconds)
        return self.cut_all()

    @property
    def refusing(self) -> bool:
        with self._lock:
            return self._is_refusing()

    def swallow_next_reply(self, marker: bytes) -> threading.Event:
        """Lose the reply of the next statement whose SQL contains ``marker``.

        One shot. The statement reaches the server and runs; everything the server
        sends for it, up to and including the ReadyForQuery that ends it, is
        discarded, then both sides of that connection are closed and the returned
        event is set. Replies to what the client sent before it are delivered.
        """
        if not marker:
            raise ValueError("marker must not be empty")
        swallow = _Swallow(bytes(marker), threading.Event())
        with self._lock:
            self._swallows.append(swallow)
        return swallow.event

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for pair in self._pairs if not pair.closed)

    # ------------------------------------------------------------ internals
    def _is_refusing(self) -> bool:
        until = self._refuse_until
        if self._refusing and until is not None and time.monotonic() >= until:
            self._refusing = False
            self._refuse_until = None
        return self._refusing

    def _claim_swallow(self, statement: bytes) -> _Swallow | None:
        with self._lock:
            for swallow in self._swallows:
                if swallow.marker in statement:
                    self._swallows.remove(swallow)
                    return swallow
        return None

    def _connect_upstream(self) -> socket.socket:
        if self.target_host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(_CONNECT_TIMEOUT)
                sock.connect(f"{self.target_host}/.s.PGSQL.{self.target_port}")
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection(
            (self.target_host, self.target_port), timeout=_CONNECT_TIMEOUT
        )
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _pair_done(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
            self._threads = [t for t in self._threads if t.is_alive() and t is not pair.thread]

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([listener], [], [], _SELECT_TIMEOUT)
                if not readable:
                    continue
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(_SELECT_TIMEOUT)
                continue
            self._handle(client)

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            refusing = self._is_refusing() or self._stopping.is_set()
            if refusing:
                self.refused += 1
        if refusing:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(self, client, next(self._numbers))
        with self._lock:
            self.accepted += 1
            self._pairs.add(pair)
            self._threads.append(pair.thread)
        pair.thread.start()


# --------------------------------------------------------------------------- backends


def terminate_backends(
    admin_dsn: str,
    dbname: str,
    *,
    application_name: str | None = None,
    timeout: float = 10.0,
) -> int:
    """``pg_terminate_backend`` every session on ``dbname`` except the caller's own.

    Only sessions with ``application_name`` when given. Waits (up to ``timeout``)
    until they are gone and returns how many were terminated.
    """
    query = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        " AND (%s::text IS NULL OR application_name = %s::text)"
    )
    params = [dbname, application_name, application_name]
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        pids = [row[0] for row in conn.execute(query, params).fetchall()]
        killed = [
            pid
            for pid in pids
            if conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        ]
        deadline = time.monotonic() + timeout
        while killed:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [killed]
            ).fetchone()
            if row is None or row[0] == 0:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"backends {killed} still alive after {timeout}s")
            time.sleep(0.02)
    return len(killed)


# --------------------------------------------------------------------------- clusters


_SOCKET_DIR = Path("/var/run/postgresql")


class PrivateClusterError(RuntimeError):
    """A cluster command failed; the message carries its output and the log tail."""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PrivateClusterError(
            f"{' '.join(args)} timed out after {timeout}s\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}"
        ) from exc
    return result


def _pg_version() -> str | None:
    for root in (Path("/etc/postgresql"), Path("/usr/lib/postgresql")):
        if root.is_dir():
            versions = sorted(
                (p.name for p in root.iterdir() if p.name.replace(".", "").isdigit()),
                key=lambda v: [int(x) for x in v.split(".")],
            )
            installed = [v for v in versions if Path(f"/usr/lib/postgresql/{v}/bin").is_dir()]
            if installed:
                return installed[-1]
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


class PrivateCluster:
    """A throwaway PostgreSQL cluster (Debian ``postgresql-common``) for one test session.

    Create with :meth:`create`, dispose of with :meth:`remove`. Check
    :meth:`available` first and skip when it returns a reason.
    """

    # Appended to postgresql.conf (pg_createcluster -o quotes some values wrongly).
    # fsync off is safe for a killed server (the OS keeps its page cache), but
    # synchronous_commit must stay on: kill() would lose acknowledged commits.
    CONFIG = {
        "listen_addresses": "'127.0.0.1'",
        "max_connections": "200",
        "fsync": "off",
        "full_page_writes": "off",
        "shared_buffers": "'32MB'",
        "ssl": "off",
        "log_min_messages": "warning",
    }

    def __init__(self, version: str, name: str, port: int) -> None:
        self.version = version
        self.name = name
        self._port = port
        self.user = "postgres"

    # ------------------------------------------------------------ construction
    @staticmethod
    def available() -> str | None:
        """None when clusters can be created here, else the reason they cannot."""
        for tool in ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster"):
            if shutil.which(tool) is None:
                return f"{tool} not found (Debian postgresql-common is needed)"
        if os.geteuid() != 0:
            return "private clusters need root (pg_createcluster as the postgres user)"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no 'postgres' system user"
        if _pg_version() is None:
            return "no PostgreSQL server binaries under /usr/lib/postgresql"
        return None

    @classmethod
    def create(
        cls,
        port: int | None = None,
        *,
        start: bool = True,
        config: Mapping[str, str] | None = None,
    ) -> PrivateCluster:
        """Create (and by default start) a new cluster named ``pgqs_<random>``.

        ``config`` is appended to its ``postgresql.conf`` instead of the test
        settings (:attr:`CONFIG`); ``{}`` keeps the stock configuration."""
        reason = cls.available()
        if reason is not None:
            raise PrivateClusterError(reason)
        version = _pg_version()
        assert version is not None
        cluster = cls(version, f"pgqs_{uuid.uuid4().hex[:10]}", port or _free_port())
        args = [
            "pg_createcluster",
            "--start-conf=manual",
            "-p",
            str(cluster.port),
        ]
        args += [version, cluster.name, "--", "--auth=trust", "--no-sync"]
        cluster._check(_run(args, timeout=120), "create")
        try:
            chosen = cls.CONFIG if config is None else config
            if chosen:
                settings = "".join(f"{key} = {value}\n" for key, value in chosen.items())
                with (cluster.config_dir / "postgresql.conf").open("a") as conf:
                    conf.write(f"\n# pgqueue_sync test settings\n{settings}")
            if start:
                cluster.start()
        except BaseException:
            cluster.remove()
            raise
        return cluster

    # ------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        return self._port

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"

    @property
    def data_dir(self) -> Path:
        return Path(f"/var/lib/postgresql/{self.version}/{self.name}")

    @property
    def config_dir(self) -> Path:
        return Path(f"/etc/postgresql/{self.version}/{self.name}")

    @property
    def log_file(self) -> Path:
        return Path(f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log")

    def __repr__(self) -> str:
        return f"<PrivateCluster {self.version}/{self.name} port={self.port}>"

    # ------------------------------------------------------------ control
    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("start", timeout=timeout)
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server (``mode`` fast or immediate)."""
        self._check_mode(mode)
        self._ctl("stop", "-m", mode, timeout=timeout)

    def restart(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop (``mode`` fast or immediate) and start again, waiting until ready."""
        self._check_mode(mode)
        if self.postmaster_pid() is None:
            self.start(timeout)
            return
        self._ctl("restart", "-m", mode, timeout=timeout)
        self.wait_ready(timeout)

    def ensure_started(self, timeout: float = 60) -> None:
        """Start the server unless it is running; wait until it accepts connections."""
        if self.postmaster_pid() is None:
            self.start(timeout)
        else:
            self.wait_ready(timeout)

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster, like a crash. It stays down until :meth:`start`.

        Waits until the postmaster and its children are dead (children left
        attached to shared memory would stop the next start), then clears the
        lock files the dead postmaster left (an unreaped zombie would otherwise
        make them look held).
        """
        pid = self.postmaster_pid()
        if pid is None:
            raise PrivateClusterError(f"{self}: not running")
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        grace = time.monotonic() + min(5.0, timeout / 2)
        while True:
            alive = [p for p in [pid, *children] if _pid_alive(p)]
            if not alive:
                break
            now = time.monotonic()
            if now >= deadline:
                raise PrivateClusterError(f"{self}: processes {alive} survived SIGKILL")
            if now >= grace:  # children that missed the postmaster's death
                for child in alive:
                    with contextlib.suppress(OSError):
                        os.kill(child, signal.SIGKILL)
            time.sleep(0.02)
        self._clear_stale_files(pid)

    def _lock_files(self) -> list[Path]:
        return [
            self.data_dir / "postmaster.pid",
            _SOCKET_DIR / f".s.PGSQL.{self.port}.lock",
        ]

    def _clear_stale_files(self, dead_pid: int | None = None) -> None:
        """Delete lock files (and the socket) of a postmaster that is no longer alive."""
        for lock in self._lock_files():
            try:
                owner = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if (dead_pid is None or owner == dead_pid) and not _pid_alive(owner):
                with contextlib.suppress(OSError):
                    lock.unlink()
                if lock.parent == _SOCKET_DIR:
                    with contextlib.suppress(OSError):
                        (_SOCKET_DIR / f".s.PGSQL.{self.port}").unlink()

    def remove(self, timeout: float = 120) -> None:
        """Stop (if needed) and delete the cluster, including files it left behind."""
        result = _run(["pg_dropcluster", "--stop", self.version, self.name], timeout=timeout)
        self._clear_stale_files()
        with contextlib.suppress(OSError):
            (_SOCKET_DIR / f"{self.version}-{self.name}.pid").unlink()
        if result.returncode != 0 and (self.data_dir.exists() or self.config_dir.exists()):
            self._check(result, "remove")

    # ------------------------------------------------------------ state
    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster, or None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_ready(self, timeout: float = 2) -> bool:
        """True when a connection can be made and answers a query."""
        try:
            with psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(int(timeout), 1)
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until :meth:`is_ready`; raise :class:`PrivateClusterError` on timeout."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() >= deadline:
                raise PrivateClusterError(f"{self} not ready after {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    @contextlib.contextmanager
    def connect(self, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection to the maintenance database."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        with psycopg.connect(self.dsn, **kwargs) as conn:
            yield conn

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in ("fast", "immediate", "smart"):
            raise ValueError(f"unknown shutdown mode {mode!r}")

    def _ctl(self, action: str, *options: str, timeout: float) -> None:
        args = [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            *options,
            self.version,
            self.name,
            action,
        ]
        self._check(_run(args, timeout=timeout), action)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            raise PrivateClusterError(
                f"{what} of {self} failed ({' '.join(map(str, result.args))},"
                f" exit {result.returncode})\nstdout: {result.stdout}\nstderr: {result.stderr}"
                f"\nlog:\n{self.log_tail()}"
            )
