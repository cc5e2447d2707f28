"""The scheduler: :class:`~.manager.SchedulerManager` runs cron schedules, once per tick
across every process, and may use the worker's thread and async helpers."""
