"""The worker: :class:`~.manager.QueueManager` and the threads that claim, run and record jobs.

Imports flow down only: this package uses the queries, the drivers and the
ground floor, never the facade, the CLI or Django.
"""
