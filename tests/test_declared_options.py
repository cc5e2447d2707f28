"""The options of entrypoint(), schedule() and run() are declared once (TypedDicts) and
a misspelt option is refused with its name and the known ones, before anything starts."""

from __future__ import annotations

import inspect

import pytest

from pgqueue_sync import PgQueuer
from pgqueue_sync.errors import ConfigurationError
from pgqueue_sync.options import RunKeywords, RunOptions
from pgqueue_sync.scheduler.executors import ScheduleKeywords
from pgqueue_sync.worker.executors import EntrypointKeywords


def test_a_misspelt_entrypoint_option_is_refused_by_name() -> None:
    pgq = PgQueuer.in_memory()
    with pytest.raises(ConfigurationError, match="'concurency_limit'.*concurrency_limit"):
        pgq.entrypoint("job", concurency_limit=2)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="'concurency_limit'"):
        pgq.qm.entrypoint("job", concurency_limit=2)  # type: ignore[call-arg]
    assert "job" not in pgq.qm.entrypoint_registry


def test_a_misspelt_schedule_option_is_refused_by_name() -> None:
    pgq = PgQueuer.in_memory()
    with pytest.raises(ConfigurationError, match="'cleanold'.*clean_old"):
        pgq.schedule("tick", "* * * * *", cleanold=True)  # type: ignore[call-arg]
    assert not pgq.sm.registry


@pytest.mark.parametrize("with_schedule", [False, True])
def test_a_misspelt_run_option_is_refused_before_anything_starts(with_schedule: bool) -> None:
    pgq = PgQueuer.in_memory()

    @pgq.entrypoint("job")
    def job(_job: object) -> None: ...

    if with_schedule:
        @pgq.schedule("tick", "* * * * *")
        def tick(_schedule: object) -> None: ...

    with pytest.raises(ConfigurationError, match="'batchsize'.*batch_size"):
        pgq.run(batchsize=3)  # type: ignore[call-arg]
    assert not pgq.shutdown.is_set()


def test_the_facade_and_the_managers_take_the_same_declared_keywords() -> None:
    pgq = PgQueuer.in_memory()
    pairs = [(pgq.entrypoint, pgq.qm.entrypoint, "EntrypointKeywords"),
             (pgq.schedule, pgq.sm.schedule, "ScheduleKeywords"),
             (pgq.run, pgq.qm.run, "RunKeywords")]
    for facade, manager, declared in pairs:
        for method in (facade, manager):
            given = inspect.signature(method).parameters["given"]
            assert given.kind is inspect.Parameter.VAR_KEYWORD
            assert declared in str(given.annotation)


def test_every_declared_run_option_is_validated_with_its_default() -> None:
    defaults = RunOptions.build()
    assert set(RunKeywords.__optional_keys__) <= {f.name for f in
                                                  RunOptions.__dataclass_fields__.values()}
    assert defaults.batch_size == 10 and defaults.concurrency == 10
    assert EntrypointKeywords.__optional_keys__ and ScheduleKeywords.__optional_keys__
