"""A task module that fails at import, for the worker command's error tests."""

from __future__ import annotations


def _read_config() -> str:
    raise RuntimeError("SHOP_API_KEY is not configured")


API_KEY = _read_config()
