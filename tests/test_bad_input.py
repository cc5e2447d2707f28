"""Bad input gets a clear error that names the value and leaves the queue unchanged.

The start of issue 11's battery: impossible durations (NaN, infinity, values no
interval holds) for run() options, enqueue delays and retries, and cron
expressions that never fire.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pgqueue_sync import ConfigurationError, Queries
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.scheduler.executors import normalize_expression

from .worker_helpers import make_pgq, pool_for

IMPOSSIBLE = [float("nan"), float("inf"), float("-inf"), 1e18, 9999999999 * 86400,
              timedelta(days=100_000)]


@pytest.mark.parametrize("value", IMPOSSIBLE, ids=repr)
@pytest.mark.parametrize("option", ["heartbeat_timeout", "dequeue_timeout", "shutdown_timeout",
                                    "wait_for_database", "log_aggregation_interval"])
def test_run_rejects_impossible_durations_naming_the_option(
    dsn: str, option: str, value: Any
) -> None:
    with pool_for(dsn) as pool:
        pgq: PgQueuer = make_pgq(pool)
        pgq.entrypoint("x")(lambda job: None)
        with pytest.raises(ConfigurationError, match=option):
            pgq.run(mode="drain", **{option: value})


@pytest.mark.parametrize("value", IMPOSSIBLE, ids=repr)
def test_enqueue_rejects_impossible_delays_and_writes_nothing(queries: Queries, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="execute_after"):
        queries.enqueue("x", None, execute_after=value)
    assert queries.queue_size() == []


def test_a_delay_in_the_past_is_still_accepted(queries: Queries) -> None:
    queries.enqueue("x", None, execute_after=-5)
    queries.enqueue("x", None, execute_after=timedelta(seconds=-5))
    assert sum(row.count for row in queries.queue_size()) == 2


@pytest.mark.parametrize("expression", ["0 0 31 2 *", "0 0 30 2 *"])
def test_a_cron_expression_that_never_fires_is_refused_at_registration(expression: str) -> None:
    with pytest.raises(ConfigurationError, match="never fires"):
        normalize_expression(expression)


LONG = "x" * 10_000


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"entrypoint": LONG}, "entrypoint"),
        ({"entrypoint": "ok", "dedupe_key": LONG}, "dedupe_key"),
        ({"entrypoint": "nul\x00"}, "entrypoint"),
        ({"entrypoint": "ok", "dedupe_key": "lone \ud800"}, "dedupe_key"),
        ({"entrypoint": "ok", "headers": {"n": float("nan")}}, "headers"),
        ({"entrypoint": "ok", "headers": {"i": float("inf")}}, "headers"),
        ({"entrypoint": "ok", "headers": {"k": "nul\x00"}}, "headers"),
        ({"entrypoint": "ok", "headers": {"k": "lone \udc00"}}, "headers"),
        ({"entrypoint": "ok", "headers": {"k": object()}}, "headers"),
    ],
    ids=["long entrypoint", "long dedupe key", "NUL entrypoint", "surrogate dedupe key",
         "NaN header", "inf header", "NUL header", "surrogate header", "object header"],
)
def test_enqueue_refuses_text_the_database_would_refuse(
    queries: Queries, kwargs: dict[str, Any], named: str
) -> None:
    entrypoint = kwargs.pop("entrypoint")
    with pytest.raises(ConfigurationError, match=named):
        queries.enqueue(entrypoint, None, **kwargs)
    assert queries.queue_size() == []


def test_the_longest_accepted_key_is_stored_and_indexed(queries: Queries) -> None:
    from pgqueue_sync.options import MAX_KEY_BYTES

    key = "é" * (MAX_KEY_BYTES // 2)  # two bytes each: exactly the limit
    [job_id] = queries.enqueue(key, None, dedupe_key=key)
    assert job_id > 0


def test_a_worker_refuses_an_entrypoint_name_too_long_to_index(dsn: str) -> None:
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        with pytest.raises(ConfigurationError, match="entrypoint name"):
            pgq.entrypoint(LONG)(lambda job: None)


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -1, 1e18], ids=repr)
def test_a_retry_with_an_impossible_delay_names_it(delay: float) -> None:
    from pgqueue_sync import RetryRequested

    with pytest.raises(ConfigurationError, match="RetryRequested delay"):
        RetryRequested(delay)


def test_retry_backoff_does_not_overflow_after_thousands_of_attempts() -> None:
    from pgqueue_sync.worker.executors import (
        DatabaseRetryEntrypointExecutor,
        EntrypointExecutorParameters,
    )

    executor = DatabaseRetryEntrypointExecutor(
        EntrypointExecutorParameters(concurrency_limit=0, func=lambda job: None),
        max_attempts=10_000, max_delay=timedelta(minutes=5), jitter=0.0,
    )
    assert executor.delay_for(5_000) == timedelta(minutes=5)
