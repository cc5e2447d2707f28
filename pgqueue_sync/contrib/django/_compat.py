"""The one place that knows where the Django Tasks API lives.

Django 6 ships ``django.tasks``; on Django 4.2–5.2 the ``django-tasks``
backport provides ``django_tasks`` (add ``"django_tasks"`` to
``INSTALLED_APPS``). The built-in package wins when both are present. Every
other module imports these names from here.
"""

from __future__ import annotations

import importlib.util

from .errors import DjangoConfigurationError


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


if _has("django.tasks"):
    from django.tasks import (
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        task,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    TASKS_MODULE = "django.tasks"
    HAS_TASKS = True
elif _has("django_tasks"):
    from django_tasks import (
        DEFAULT_TASK_QUEUE_NAME,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        task,
        task_backends,
    )
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    TASKS_MODULE = "django_tasks"
    HAS_TASKS = True
else:  # pragma: no cover - depends on what is installed
    TASKS_MODULE = ""
    HAS_TASKS = False


def require_tasks() -> None:
    """Raise a configuration error naming the package to install when Tasks are missing."""
    if not HAS_TASKS:
        raise DjangoConfigurationError(
            "the Django Tasks API is missing: use Django 6, or on Django 4.2-5.2 "
            "pip install django-tasks and add 'django_tasks' to INSTALLED_APPS"
        )


__all__ = [
    "DEFAULT_TASK_QUEUE_NAME",
    "HAS_TASKS",
    "TASKS_MODULE",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "require_tasks",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
