"""``python -m pgqueue_sync``: the ``pgq-sync`` command line."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
