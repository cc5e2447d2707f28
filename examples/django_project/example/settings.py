"""Settings of the pgqueue_sync example project.

The database comes from ``DATABASE_URL`` (``postgresql://user:password@host:port/name``),
or else from the libpq variables ``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGPASSWORD`` and ``PGDATABASE`` applied over the default
``postgresql://root@127.0.0.1:5432/pgqs_example``.
"""

from __future__ import annotations

import importlib.util
import os

from psycopg.conninfo import conninfo_to_dict

DEFAULT_DATABASE_URL = "postgresql://root@127.0.0.1:5432/pgqs_example"
_PG_VARIABLES = {
    "PGHOST": "host",
    "PGPORT": "port",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGDATABASE": "dbname",
}


def _database() -> dict[str, object]:
    """One DATABASES entry from DATABASE_URL, or from PG* over the default URL."""
    url = os.environ.get("DATABASE_URL")
    params = conninfo_to_dict(url or DEFAULT_DATABASE_URL)
    if not url:
        for variable, key in _PG_VARIABLES.items():
            if os.environ.get(variable):
                params[key] = os.environ[variable]
    return {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,  # anything else in the URL, e.g. sslmode
    }


BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-do-not-deploy")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

DATABASES = {"default": _database()}

# Django 6 has django.tasks built in; on Django 4.2-5.2 the django-tasks
# backport provides it and must be an installed app.
USE_TASKS_BACKPORT = importlib.util.find_spec("django.tasks") is None

INSTALLED_APPS = [
    "pgqueue_sync.contrib.django",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    *(["django_tasks"] if USE_TASKS_BACKPORT else []),
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Django Tasks (@task functions) go through the queue, on entrypoint
# "django_tasks:<queue name>".
TASKS = {
    "default": {
        "BACKEND": "pgqueue_sync.contrib.django.PgQueueSyncBackend",
        "QUEUES": ["default"],
    },
}

# Defaults for `manage.py pgq_sync worker` (its command-line flags win).
PGQUEUE_SYNC = {
    "WORKER": {"concurrency": 4, "dequeue_timeout": 5.0, "shutdown_timeout": 30.0},
}
