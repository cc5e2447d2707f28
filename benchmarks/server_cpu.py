"""CPU time spent by the local PostgreSQL server, for per-job cost figures.

PostgreSQL runs each connection in its own process, and a drain's backends
exit when the worker closes its connections. The postmaster reaps them, so
their CPU time moves into its ``cutime``/``cstime``. The server's total is then
the CPU of every live ``postgres`` process plus what each postmaster has
reaped. Two readings, before and after a run, give the server's share of the
run. Other work on the same server lands in the figure too, so it is only
meaningful on a quiet machine.
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[str, int, list[str]] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:  # the process ended between listdir() and open()
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, int(fields[1]), fields  # fields[1] is the parent pid


def server_cpu_seconds() -> float | None:
    """CPU seconds used so far by the local PostgreSQL servers; ``None`` if none is local."""
    stats = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (stat := _stat(pid)) is not None and stat[0] == "postgres":
            stats[int(pid)] = stat
    if not stats:
        return None
    ticks = 0
    for _name, parent, fields in stats.values():
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if parent not in stats:  # a postmaster: add the backends it has reaped
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK
