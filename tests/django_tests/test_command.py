"""``manage.py pgq_sync``: the click CLI through call_command and a real ``python -m django``."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connection
from django.test import override_settings

import pgqueue_sync.launcher
from pgqueue_sync.contrib.django import enqueue
from pgqueue_sync.contrib.django.management.commands.pgq_sync import split_argv, subcommand_of
from pgqueue_sync.contrib.django.worker import FACTORY_PATH

from ..conftest import create_database, drop_database
from .shop.models import Order

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT = 60.0
THREAD_EXIT_TIMEOUT = 10.0





def with_settings(**changes: Any) -> Any:
    return override_settings(PGQUEUE_SYNC={**settings.PGQUEUE_SYNC, **changes})


# -- call_command ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_verify_runs_on_the_migrated_test_database(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("pgq_sync", "verify", "--expect", "present")
    assert capsys.readouterr().out == "the queue schema is present\n"


@pytest.mark.django_db
def test_a_click_failure_is_a_command_error_with_its_exit_code() -> None:
    with pytest.raises(CommandError) as failed:
        call_command("pgq_sync", "verify", "--expect", "absent")
    assert failed.value.returncode == 1
    assert "the schema is not absent" in str(failed.value)


@pytest.mark.django_db(transaction=True)
def test_queue_size_prints_json(committed: None, capsys: pytest.CaptureFixture[str]) -> None:
    enqueue("shop.send_confirmation", [b"1", b"2"])  # autocommit: visible to the command
    call_command("pgq_sync", "queue-size", "--json")
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"entrypoint": "shop.send_confirmation", "priority": 0, "status": "queued",
                     "count": 2}]


@pytest.mark.django_db
def test_output_follows_call_commands_stdout() -> None:
    out = io.StringIO()
    call_command("pgq_sync", "queue-size", stdout=out)
    assert out.getvalue() == "the queue is empty\n"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["bogus"], r"No such command 'bogus'\. \(see 'pgq_sync --help'\)"),
        # click's wording of this one differs between versions
        (["queue-size", "--nope"],
         r"No such option.*--nope.* \(see 'pgq_sync queue-size --help'\)"),
        (["results"], r"'pgq_sync results' needs a subcommand; see 'pgq_sync results --help'"),
    ],
)
def test_usage_errors_are_one_line_command_errors(args: list[str], pattern: str) -> None:
    with pytest.raises(CommandError) as failed:
        call_command("pgq_sync", *args)
    assert re.fullmatch(pattern, str(failed.value))
    assert failed.value.returncode == 2


def test_help_lists_the_subcommands_and_needs_no_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("pgq_sync", "--help")
    listed = capsys.readouterr().out
    call_command("pgq_sync")
    assert capsys.readouterr().out == listed
    for name in ("worker", "install", "verify", "queue-size", "requeue", "cancel"):
        assert f"\n  {name} " in listed


@pytest.mark.django_db
def test_prefix_and_schema_come_from_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with with_settings(PREFIX="elsewhere_"):
        call_command("pgq_sync", "verify", "--expect", "absent")  # no such objects there
        # A flag given by the caller wins over the setting.
        call_command("pgq_sync", "--prefix", "", "verify", "--expect", "present")
    assert capsys.readouterr().out.splitlines() == [
        "the queue schema is absent", "the queue schema is present"]


@pytest.mark.django_db
def test_the_password_is_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(connection.settings_dict, "PASSWORD", "s3cret-pw")
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")
    with pytest.raises(CommandError) as failed:
        call_command("pgq_sync", "--log-level", "DEBUG", "queue-size")
    captured = capsys.readouterr()
    assert ":1/test_pgqs_django" in str(failed.value)
    assert "s3cret" not in str(failed.value) + captured.out + captured.err


@pytest.mark.django_db
def test_install_skips_the_schema_check_the_worker_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with with_settings(PREFIX="fresh_"):
        call_command("pgq_sync", "install", "--dry-run", skip_checks=False)
        assert "CREATE TABLE" in capsys.readouterr().out
        with pytest.raises(SystemCheckError, match="pgqueue_sync.E004"):
            call_command("pgq_sync", "worker", "--mode", "drain", skip_checks=False)


def test_django_options_are_split_from_the_click_arguments() -> None:
    assert split_argv(["-v", "2", "--settings=x.y", "worker", "--skip-checks", "-q", "a",
                       "--pythonpath", "/p", "--traceback", "-v3", "--", "--no-color"]) == (
        ["-v", "2", "--settings=x.y", "--skip-checks", "--pythonpath", "/p", "--traceback",
         "-v3"],
        ["worker", "-q", "a", "--", "--no-color"],
    )
    assert subcommand_of(["--log-level", "DEBUG", "--prefix", "x", "queue-size"]) == "queue-size"
    assert subcommand_of(["--help"]) is None


# -- the worker subcommand ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_worker_subcommand_drains_a_views_job(client: Any, committed: None) -> None:
    order_id = client.get("/orders/?email=w@example.com").json()["order"]
    call_command("pgq_sync", "worker", "--mode", "drain", "--dequeue-timeout", "0.5",
                 "--concurrency", "2")
    assert Order.objects.get(pk=order_id).sent


@pytest.mark.django_db
def test_worker_flags_override_the_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(pgqueue_sync.launcher, "run",
                        lambda factory, args, **options: calls.append((factory, args, options)))
    with with_settings(WORKER={"mode": "drain", "dequeue_timeout": 2.5, "concurrency": 3,
                               "restart_on_failure": True}):
        call_command("pgq_sync", "worker", "--concurrency", "7", "-q", "emails",
                     "--no-schedules", "--entrypoint", "shop.send_confirmation")
    [(factory, args, options)] = calls
    assert factory == FACTORY_PATH
    assert list(args) == ["--queue", "emails", "--entrypoint", "shop.send_confirmation",
                          "--no-schedules", "--concurrency", "7"]
    assert options["mode"] == "drain" and options["dequeue_timeout"] == 2.5  # settings
    assert options["concurrency"] == 7  # the flag wins
    assert options["restart_on_failure"] is True
    assert logging.getLogger().level == logging.INFO


@pytest.mark.django_db
def test_worker_rejects_bad_settings_and_connection_flags() -> None:
    with with_settings(WORKER={"mode": "sometimes"}), pytest.raises(CommandError) as failed:
        call_command("pgq_sync", "worker")
    assert "PGQUEUE_SYNC['WORKER']['mode']" in str(failed.value)
    with pytest.raises(CommandError, match="drop --dsn"):
        call_command("pgq_sync", "--dsn", "dbname=x", "worker")
    with pytest.raises(CommandError, match="nothing to run") as failed:
        call_command("pgq_sync", "worker", "--no-tasks", "--no-entrypoints", "--no-schedules")
    assert failed.value.returncode == 2


@pytest.mark.django_db
def test_a_task_module_that_fails_to_import_is_summarised_with_the_users_frames() -> None:
    with with_settings(TASK_MODULES=["tests.django_tests.shop.broken_tasks"]), \
            pytest.raises(CommandError) as failed:
        call_command("pgq_sync", "worker", "--mode", "drain")
    message = str(failed.value)
    first, _, trace = message.partition("\n")
    assert first.startswith("could not build the worker with ")
    assert "RuntimeError: SHOP_API_KEY is not configured" in first
    assert "broken_tasks.py" in trace and "_read_config" in trace
    assert "pgqueue_sync" not in trace  # our frames are trimmed
    assert failed.value.returncode == 1


@pytest.mark.django_db
def test_impossible_worker_settings_stop_the_command_with_the_key() -> None:
    with with_settings(WORKER={"dequeue_timeout": float("inf")}), \
            pytest.raises(CommandError) as failed:
        call_command("pgq_sync", "worker", "--mode", "drain")
    assert "PGQUEUE_SYNC['WORKER']['dequeue_timeout']" in str(failed.value)
    assert failed.value.returncode == 2


# -- python -m django, in a subprocess ------------------------------------------------------


def manage(*args: str, suffix: str, **popen: Any) -> Any:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django_tests.settings",
           "PYTHONPATH": str(REPO), "PGQS_TEST_DB_SUFFIX": suffix}
    command = [sys.executable, "-m", "django", "pgq_sync", *args]
    if popen:
        return subprocess.Popen(command, env=env, cwd=REPO, text=True, **popen)
    return subprocess.run(command, env=env, cwd=REPO, text=True, capture_output=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


def test_help_from_the_command_line() -> None:
    # No database needed: the suffix names one that does not exist.
    done = manage("--help", suffix="_nonexistent")
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m django pgq_sync [OPTIONS] COMMAND" in done.stdout
    assert "\n  worker " in done.stdout
    worker_help = manage("worker", "--help", suffix="_nonexistent")
    assert worker_help.returncode == 0 and "--no-tasks" in worker_help.stdout


def test_a_bad_subcommand_from_the_command_line_is_one_line() -> None:
    done = manage("bogus", suffix="_nonexistent")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "CommandError: No such command 'bogus'. (see 'python -m django pgq_sync --help')"]


@pytest.fixture
def real_database(server_dsn: str) -> Iterator[str]:
    """A scratch database standing in for the project's real (non-test) one."""
    suffix = f"_cmd_{uuid.uuid4().hex[:8]}"
    name = "pgqs_django" + suffix
    create_database(server_dsn, name)
    try:
        yield suffix
    finally:
        drop_database(server_dsn, name)


def test_install_verify_and_a_worker_from_the_command_line(real_database: str) -> None:
    suffix = real_database
    before = manage("verify", "--expect", "absent", suffix=suffix)
    assert before.returncode == 0, before.stderr
    install = manage("install", "--results", suffix=suffix)
    assert install.returncode == 0, install.stderr
    verify = manage("verify", "--expect", "present", suffix=suffix)
    assert (verify.returncode, verify.stdout) == (0, "the queue schema is present\n")
    size = manage("queue-size", "--json", suffix=suffix)
    assert (size.returncode, json.loads(size.stdout)) == (0, [])
    drained = manage("worker", "--mode", "drain", "--dequeue-timeout", "0.2", suffix=suffix)
    assert drained.returncode == 0, drained.stderr
    assert "registered entrypoints: shop.send_confirmation" in drained.stderr
    assert f"pgqs_django{suffix}" in drained.stderr  # the worker names its database


def test_sigterm_stops_a_running_worker(real_database: str) -> None:
    suffix = real_database
    assert manage("install", "--results", suffix=suffix).returncode == 0
    worker = manage("worker", "--skip-checks", suffix=suffix, stderr=subprocess.PIPE,
                    stdout=subprocess.DEVNULL)
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert worker.stderr is not None
        for line in worker.stderr:
            lines.append(line)
            if "registered Django Tasks queues" in line:
                ready.set()

    reader = threading.Thread(target=read, name="test-worker-stderr", daemon=True)
    reader.start()
    try:
        assert ready.wait(SUBPROCESS_TIMEOUT), "".join(lines)
        worker.terminate()
        assert worker.wait(SUBPROCESS_TIMEOUT) == 0, "".join(lines)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(SUBPROCESS_TIMEOUT)
        reader.join(THREAD_EXIT_TIMEOUT)


def test_worker_processes_from_the_command_line(real_database: str) -> None:
    """``worker --processes 2`` (drain mode): each process sets Django up and connects on
    its own, drains, and exits 0; the supervisor then exits 0 (docs/processes.md)."""
    suffix = real_database
    assert manage("install", "--results", suffix=suffix).returncode == 0
    drained = manage("worker", "--processes", "2", "--mode", "drain", "--dequeue-timeout", "0.2",
                     suffix=suffix)
    assert drained.returncode == 0, drained.stderr
    assert drained.stderr.count("registered entrypoints: shop.send_confirmation") == 2
    assert drained.stderr.count("finished on its own (exit status 0); not replaced") == 2
