"""The pgqueue_sync test suite."""
