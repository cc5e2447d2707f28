"""The one PostgreSQL server a test run uses: ``PGQUEUE_SYNC_TEST_DSN``, else embedded.

Without ``PGQUEUE_SYNC_TEST_DSN`` the first caller (the root conftest, or the
Django test settings if pytest-django loads them first) starts an embedded
server (the ``embedded`` extra) in a fresh temporary directory and exports its
DSN as ``PGQUEUE_SYNC_TEST_DSN``, so every later caller, every test module and
every subprocess a test starts uses that same server. The process that started
it stops it and deletes the directory when it exits.

The server is initialised with ``TZ=UTC``: initdb writes the environment's time
zone into the server's configuration, and Django's ``TIME_ZONE`` must not leak
into it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

DSN_VARIABLE = "PGQUEUE_SYNC_TEST_DSN"


def server_dsn() -> str | None:
    """The test server's DSN, starting the embedded one if needed; ``None`` if neither."""
    dsn = os.environ.get(DSN_VARIABLE)
    if dsn:
        return dsn
    from pgqueue_sync.cli import embedded

    if not embedded.is_available():
        return None
    directory = tempfile.mkdtemp(prefix="pgqs_test_")
    atexit.register(_remove, directory)
    previous_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    try:
        dsn = embedded.embedded_dsn(directory)
    finally:
        if previous_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = previous_tz
    os.environ[DSN_VARIABLE] = dsn
    return dsn


def _remove(directory: str) -> None:
    from pgqueue_sync.cli import embedded

    embedded.stop(directory)
    shutil.rmtree(directory, ignore_errors=True)
