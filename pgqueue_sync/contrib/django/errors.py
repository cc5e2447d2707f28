"""Errors of the Django integration: ours and Django's at once."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from ...errors import ConfigurationError


class DjangoConfigurationError(ConfigurationError, ImproperlyConfigured):
    """A Django setting (``PGQUEUE_SYNC``, ``DATABASES``, ``TASKS``) is wrong.

    Catch it as :class:`~pgqueue_sync.errors.ConfigurationError` or as Django's
    ``ImproperlyConfigured``.
    """
