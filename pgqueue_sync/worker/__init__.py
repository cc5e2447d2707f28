"""The worker: :class:`~.manager.QueueManager` and the threads that claim, run and record jobs.

Where things live, in the order a job meets them:

* ``manager.py``: registration, ``run()``, what starts and stops in which order;
* ``registry.py``: what ``entrypoint()`` keeps for each entrypoint;
* ``claiming.py``: the dequeue loop (dispatcher, extra claim lanes, idle waits);
* ``dispatch.py``: running one job (threads, the event loop, child processes)
  and its timeout;
* ``outcomes.py``: recording how it ended; handing unfinished jobs back;
* ``events.py``: the listener, the events it receives, its health probes;
* ``held.py`` and ``state.py``: what those parts share (the held jobs, the stop
  and wake-up events); ``lifecycle.py``: start/stop helpers that know no jobs.

The building blocks they use: ``buffers`` (batched writes), ``capacity``,
``threads``, ``aio``, ``listener``, ``timeouts``, ``isolation``,
``cancellation``, ``executors``, ``ratelimit``, ``upkeep`` and ``retention``.

Imports flow down only: this package uses the queries, the drivers and the
ground floor, never the facade, the CLI or Django.
"""
