"""DSN resolution order, URL normalisation, and errors that never show a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgqueue_sync.cli import embedded
from pgqueue_sync.cli.dsn import normalize_dsn, resolve_dsn
from pgqueue_sync.errors import ConfigurationError

FULL_ENV = {
    "PGQUEUE_SYNC_DSN": "postgresql://a@h1/db1",
    "DATABASE_URL": "postgresql://b@h2/db2",
    "PGQUEUER_DSN": "postgresql://c@h3/db3",
    "PGDSN": "postgresql://d@h4/db4",
    "PGHOST": "h5",
}


def test_explicit_dsn_wins_over_every_variable():
    resolved = resolve_dsn("host=h0 dbname=db0", environ=FULL_ENV)
    assert (resolved.conninfo, resolved.source) == ("host=h0 dbname=db0", "--dsn")


@pytest.mark.parametrize(
    "removed, expected_source",
    [
        ((), "PGQUEUE_SYNC_DSN"),
        (("PGQUEUE_SYNC_DSN",), "DATABASE_URL"),
        (("PGQUEUE_SYNC_DSN", "DATABASE_URL"), "PGQUEUER_DSN"),
        (("PGQUEUE_SYNC_DSN", "DATABASE_URL", "PGQUEUER_DSN"), "PGDSN"),
    ],
)
def test_variables_are_read_in_documented_order(removed, expected_source):
    env = {k: v for k, v in FULL_ENV.items() if k not in removed}
    resolved = resolve_dsn(environ=env)
    assert resolved.source == expected_source
    assert resolved.conninfo == env[expected_source]


def test_libpq_variables_give_an_empty_conninfo_that_libpq_completes():
    resolved = resolve_dsn(environ={"PGHOST": "db.internal", "PGUSER": "app"})
    assert (resolved.conninfo, resolved.source) == ("", "libpq PG* variables")


def test_blank_variables_are_skipped():
    resolved = resolve_dsn(environ={"PGQUEUE_SYNC_DSN": "  ", "DATABASE_URL": "postgresql:///x"})
    assert resolved.source == "DATABASE_URL"


def test_nothing_configured_and_no_embedded_falls_back_to_libpq_defaults():
    resolved = resolve_dsn(environ={}, allow_embedded=False)
    assert (resolved.conninfo, resolved.source) == ("", "libpq defaults")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql+psycopg://u:p@h:5433/db", "postgresql://u:p@h:5433/db"),
        ("postgresql+asyncpg://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
        ("postgres+psycopg2://u@h/db", "postgresql://u@h/db"),
        ("postgres://u@h/db", "postgres://u@h/db"),
        ("host=h dbname=db", "host=h dbname=db"),
    ],
)
def test_sqlalchemy_style_urls_lose_their_driver_suffix(url, expected):
    assert normalize_dsn(url) == expected


def test_non_postgres_url_is_rejected_with_the_fix():
    with pytest.raises(ConfigurationError, match=r"DATABASE_URL is a mysql:// URL; give a"):
        resolve_dsn(environ={"DATABASE_URL": "mysql://root:hunter2@h/db"})


def test_invalid_keyword_string_error_does_not_echo_the_password():
    with pytest.raises(ConfigurationError) as info:
        normalize_dsn("host=h password='hunter2 dbname=x", source="PGQUEUE_SYNC_DSN")
    message = str(info.value)
    assert "PGQUEUE_SYNC_DSN is not a valid connection string" in message
    assert "hunter2" not in message


def test_describe_hides_the_password():
    resolved = resolve_dsn("postgresql://app:hunter2@db.internal:5433/jobs")
    assert "hunter2" not in resolved.describe()
    assert "db.internal:5433/jobs" in resolved.describe()


def test_embedded_data_dir_comes_from_the_variable_then_a_per_user_dir(tmp_path: Path):
    assert embedded.data_dir({"PGQUEUE_SYNC_DATA_DIR": str(tmp_path)}) == tmp_path
    default = embedded.data_dir({"XDG_DATA_HOME": str(tmp_path / "share")})
    assert default == tmp_path / "share" / "pgqueue_sync" / "embedded-pg"
    spaced = embedded.data_dir({"XDG_DATA_HOME": str(tmp_path / "my data")})
    assert " " not in str(spaced)


def test_embedded_refuses_a_data_dir_with_spaces(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="contains a space"):
        embedded.embedded_dsn(tmp_path / "has space")
