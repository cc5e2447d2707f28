"""The demo application behind ``pgq-sync demo``."""

from __future__ import annotations

from pgqueue_sync.demo import run_demo


def test_demo_installs_schema_then_processes_every_job(empty_dsn):
    lines: list[str] = []
    report = run_demo(empty_dsn, jobs=6, echo=lines.append)
    assert report.installed_schema is True
    assert report.enqueued == 6
    assert report.outcomes == {"successful": 6}
    assert any("retried handler ran" in line for line in lines)
    again = run_demo(empty_dsn, jobs=3, echo=lines.append)
    assert again.installed_schema is False and again.outcomes == {"successful": 3}
