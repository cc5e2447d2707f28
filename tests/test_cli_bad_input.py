"""Bad input on the ``pgq-sync`` command line, each in a real subprocess.

Every case asserts the exit code, that the message names the bad value or
option, that no traceback is printed, that the DSN's password never appears,
and (where a database is involved) that the queue is unchanged afterwards.
"""

from __future__ import annotations

import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .test_cli import one_line_error, pgq_sync

PASSWORD = "hunter2-do-not-print"
LONG = "x" * 5000


def with_password(dsn: str) -> str:
    """The test DSN with a password (trust auth ignores it; it must never be printed)."""
    return f"{dsn} password={PASSWORD}"


def assert_clean(result: Any) -> None:
    output = result.stdout + result.stderr
    assert PASSWORD not in output, output
    assert "Traceback" not in output, output


def queue_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def factories(tmp_path: Path) -> Path:
    """A directory of broken worker factories, used as the subprocess's cwd."""
    files = {
        "missing_dep.py": "import nosuchdependency_for_pgqs\n\ndef make():\n    pass\n",
        "raising.py": """
            def check_config():
                raise ValueError("REDIS_URL is not set")

            def make():
                check_config()
        """,
        "syntax_error.py": "def make(:\n    pass\n",
        "wrong_type.py": "def make():\n    return 42\n",
        "not_callable.py": "make = 3\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


# -- impossible numbers and text: refused before anything is written ---------------------------

ENQUEUE_CASES = [
    (["ep", "x", "--delay", "9999999999d"], "--delay"),
    (["ep", "x", "--delay", "nan"], "--delay"),
    (["ep", "x", "--delay", "-5"], "--delay"),
    (["ep", "x", "--delay", "1" + "0" * 400], "--delay"),
    ([LONG, "x"], "entrypoint"),
    (["nul\x01ok\udcff", "x"], "entrypoint"),
    (["ep", "x", "--dedupe-key", LONG], "dedupe_key"),
    (["ep", "x", "--headers", '{"a": NaN}'], "headers"),
    (["ep", "x", "--headers", '{"a": Infinity}'], "headers"),
    (["ep", "x", "--headers", "[1, 2]"], "--headers"),
    (["ep", "x", "--headers", "{not json"], "--headers"),
    (["ep", "x", "--priority", "99999999999"], "priority"),
    (["ep", "x", "--priority", "high"], "--priority"),
    (["ep", "x", "--on-conflict", "merge"], "--on-conflict"),
]


@pytest.mark.parametrize(("args", "named"), ENQUEUE_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(ENQUEUE_CASES)])
def test_enqueue_refuses_bad_values_naming_them(dsn: str, args: list[str], named: str) -> None:
    result = pgq_sync("--dsn", with_password(dsn), "enqueue", *args)
    assert result.returncode == 2, result.stderr
    assert named in one_line_error(result)
    assert_clean(result)
    assert queue_rows(dsn) == 0


def test_a_payload_that_is_not_utf8_is_stored_byte_for_byte(dsn: str) -> None:
    result = pgq_sync("--dsn", dsn, "enqueue", "ep", "\udcff\udcfe")  # argv bytes ff fe
    assert result.returncode == 0, result.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT payload FROM pgqueuer").fetchone()
    assert row is not None and bytes(row[0]) == b"\xff\xfe"


RUN_DURATIONS = [
    ("--dequeue-timeout", "inf"),
    ("--dequeue-timeout", "0"),
    ("--heartbeat-timeout", "nan"),
    ("--shutdown-timeout", "-1"),
    ("--restart-delay", "1e400"),
    ("--wait-for-database", "inf"),
    ("--heartbeat-timeout", "99999d"),
]


@pytest.mark.parametrize(("option", "value"), RUN_DURATIONS, ids=[" ".join(c) for c in
                                                                  RUN_DURATIONS])
def test_run_refuses_impossible_durations_naming_the_option(
    dsn: str, factories: Path, option: str, value: str
) -> None:
    # The factory would fail too: the options are checked first, before it is even imported.
    result = pgq_sync("--dsn", with_password(dsn), "run", "raising:make", option, value,
                      cwd=factories)
    assert result.returncode == 2, result.stderr
    assert option in one_line_error(result)
    assert_clean(result)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["dashboard", "-i", "nan", "--once"], "--interval"),
        (["dashboard", "-i", "0", "--once"], "--interval"),
        (["stale", "-t", "inf"], "--threshold"),
        (["stale", "-t", "100000d"], "--threshold"),
        (["prune", "--older-than", "nan", "--yes"], "--older-than"),
        (["prune", "--older-than", "9" * 30 + "d", "--yes"], "--older-than"),
        (["results", "prune", "--older-than", "inf"], "--older-than"),
        (["requeue", "abc"], "abc"),
        (["install", "--durability", "bogus"], "--durability"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_operator_commands_refuse_bad_values(dsn: str, args: list[str], named: str) -> None:
    result = pgq_sync("--dsn", with_password(dsn), *args)
    assert result.returncode == 2, result.stderr
    assert named in one_line_error(result)
    assert_clean(result)
    assert queue_rows(dsn) == 0


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--prefix", "a-b"], "prefix"),
        (["--prefix", "x" * 31], "prefix of at most 30 bytes"),
        (["--prefix", "1abc"], "prefix"),
        (["--schema", "a;b"], "schema"),
        (["--schema", "s" * 64], "schema"),
    ],
    ids=["dash", "31 bytes", "digit", "semicolon", "64-byte schema"],
)
def test_hostile_names_are_refused_before_any_sql(
    empty_dsn: str, options: list[str], named: str
) -> None:
    result = pgq_sync("--dsn", with_password(empty_dsn), *options, "install")
    assert result.returncode == 2, result.stderr
    assert named in one_line_error(result)
    assert_clean(result)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('pgqueuer')").fetchone() == (None,)


def test_a_prefix_from_the_environment_is_checked_too(empty_dsn: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PGQUEUER_PREFIX": "p" * 40}
    result = subprocess.run(
        [sys.executable, "-m", "pgqueue_sync", "--dsn", with_password(empty_dsn), "install"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert result.returncode == 2
    assert "PGQUEUER_PREFIX" in one_line_error(result)
    assert_clean(result)


# -- broken factories ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "summary", "user_frame"),
    [
        ("missing_dep:make",
         "could not load missing_dep:make: ModuleNotFoundError: No module named "
         "'nosuchdependency_for_pgqs'", "missing_dep.py"),
        ("raising:make",
         "could not build the worker with raising:make: ValueError: REDIS_URL is not set",
         "check_config"),
        ("syntax_error:make", "could not load syntax_error:make: SyntaxError", "syntax_error.py"),
    ],
    ids=["missing dependency", "factory raises", "syntax error"],
)
def test_a_broken_factory_gives_a_summary_and_only_the_users_frames(
    dsn: str, factories: Path, factory: str, summary: str, user_frame: str
) -> None:
    result = pgq_sync("--dsn", with_password(dsn), "run", factory, cwd=factories)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"Error: {summary}"), result.stderr
    assert user_frame in result.stderr
    assert "pgqueue_sync" not in "\n".join(lines[1:]), result.stderr  # our frames trimmed
    assert "importlib" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_log_level_debug_shows_every_frame(dsn: str, factories: Path) -> None:
    result = pgq_sync("--dsn", dsn, "--log-level", "DEBUG", "run", "raising:make", cwd=factories)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "launcher.py" in result.stderr and "check_config" in result.stderr


@pytest.mark.parametrize(
    ("factory", "named"),
    [
        ("no_such_module:make", "no_such_module"),
        ("raising:no_such_function", "no_such_function"),
        ("no_colon", "module:function"),
        ("wrong_type:make", "returned int"),
        ("not_callable:make", "not callable"),
    ],
)
def test_a_factory_path_that_leads_nowhere_is_one_line(
    dsn: str, factories: Path, factory: str, named: str
) -> None:
    result = pgq_sync("--dsn", with_password(dsn), "run", factory, cwd=factories)
    assert result.returncode == 2, result.stderr
    assert named in one_line_error(result)
    assert_clean(result)


# -- connections ---------------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_server_that_never_answers_times_out_with_one_line(silent_server: int) -> None:
    dsn = (f"host=127.0.0.1 port={silent_server} user=x dbname=x sslmode=disable "
           f"connect_timeout=2 password={PASSWORD}")
    started = time.monotonic()
    result = pgq_sync("--dsn", dsn, "queue-size", timeout=60)
    assert result.returncode == 1
    assert f"127.0.0.1:{silent_server}" in one_line_error(result)
    assert time.monotonic() - started < 30
    assert_clean(result)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=1 user=root dbname=x",
        "host=127.0.0.1 port=5432 user=root dbname=no_such_database_pgqs",
        "postgresql://root:{password}@127.0.0.1:1/x",
        "host=127.0.0.1 port=notaport",
    ],
    ids=["refused", "unknown database", "URL with password", "bad port"],
)
def test_an_unusable_dsn_is_one_line_without_the_password(dsn: str) -> None:
    dsn = dsn.format(password=PASSWORD) if "{password}" in dsn else f"{dsn} password={PASSWORD}"
    result = pgq_sync("--dsn", dsn, "queue-size")
    assert result.returncode in (1, 2)
    one_line_error(result)
    assert_clean(result)


def test_a_missing_schema_says_to_install_it(empty_dsn: str) -> None:
    result = pgq_sync("--dsn", with_password(empty_dsn), "enqueue", "ep", "x")
    assert result.returncode == 1
    assert "pgq-sync install" in one_line_error(result)
    assert_clean(result)
