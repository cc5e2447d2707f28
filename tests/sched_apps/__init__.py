"""Scheduler applications run as child processes by ``tests/test_scheduler.py``."""
