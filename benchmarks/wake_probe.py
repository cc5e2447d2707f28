"""What an idle machine costs a wake-up: round trips and thread hand-offs, hot and after idling.

    python benchmarks/wake_probe.py [--samples 200] [--idle 0.1]

The idle-latency benchmark measures a job enqueued after the worker sat idle
for 50-150 ms. On a virtual machine an idle CPU is halted, and waking it (and
the process on it) costs far more than a busy loop suggests. This probe
measures the two steps every job start pays, each back to back ("hot") and
after ``--idle`` seconds of sleep ("after idle"), medians in ms:

* a ``SELECT 1`` round trip on one psycopg connection (the server's backend
  process must wake, and then the client);
* a hand-off between two threads through ``threading.Event`` (one thread
  wakes another, as the listener wakes the dispatcher and the dispatcher a
  handler thread).

A worker's share of the idle latency (notification, claim, hand-over to a
handler) is at least one notification wake-up, one claim round trip and two
thread hand-offs; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402
from common import server_dsn  # noqa: E402

JOIN_TIMEOUT = 5.0


def round_trips(conn: psycopg.Connection[object], samples: int, idle: float) -> float:
    times = []
    for _ in range(samples):
        if idle:
            time.sleep(idle)
        start = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def hand_offs(samples: int, idle: float) -> float:
    go, seen = threading.Event(), threading.Event()
    stop = False
    woke: list[float] = []

    def wake_up() -> None:
        while go.wait(JOIN_TIMEOUT):
            go.clear()
            if stop:
                return
            woke.append(time.perf_counter())
            seen.set()

    thread = threading.Thread(target=wake_up, name="wake-probe", daemon=True)
    thread.start()
    times = []
    try:
        for _ in range(samples):
            if idle:
                time.sleep(idle)
            seen.clear()
            start = time.perf_counter()
            go.set()
            if not seen.wait(JOIN_TIMEOUT):
                raise SystemExit("the woken thread did not answer")
            times.append(woke[-1] - start)
    finally:
        stop = True
        go.set()
        thread.join(JOIN_TIMEOUT)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--idle", type=float, default=0.1, help="seconds idle before each")
    args = parser.parse_args()
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        rows = [("SELECT 1 round trip", round_trips(conn, args.samples, 0.0),
                 round_trips(conn, args.samples, args.idle)),
                ("thread hand-off", hand_offs(args.samples, 0.0),
                 hand_offs(args.samples, args.idle))]
    print(f"{'median, ms':<22}{'hot':>8}{'after idle':>12}   ({args.idle * 1000:.0f} ms idle)")
    for name, hot, cold in rows:
        print(f"{name:<22}{hot:>8.3f}{cold:>12.3f}")


if __name__ == "__main__":
    main()
