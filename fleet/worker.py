"""What a worker process imports: the app with its tasks registered (``celery -A fleet.worker``), the
fleet's pool and transport, and Celery's worker signals wired to the middlewares' lifecycle hooks."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Iterable
from typing import Any

import celery.concurrency
import redis.utils
from celery.signals import (
    after_setup_logger,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from fleet import tasks as _tasks  # noqa: F401 - registers the tasks on the app
from fleet.app import app
from fleet.deadletters import DeadLetters
from fleet.errors import ConfigError
from fleet.recovery import worker_id
from fleet.runtime import get_runtime, reset_runtime
from fleet.settings import Settings

__all__ = ["ASYNCIO_POOL", "TASK_LINE_LOGGERS", "app", "quiet_task_lines", "worker_argv", "worker_env"]

#: The Celery pool class behind ``pool = "asyncio"`` (fleet/asyncio_pool.py).
ASYNCIO_POOL = "fleet.asyncio_pool:AsyncioPool"

_POOL_ALIASES: dict[str, str] = celery.concurrency.ALIASES  # type: ignore[attr-defined]  # not in the stubs
# `--pool threads` means our resizable threads pool in every fleet worker (fleet scale grows it).
_POOL_ALIASES["threads"] = "fleet.pool:ResizableThreadPool"
# `pool = "asyncio"` starts a worker with `--pool custom`, Celery's name for an out-of-tree pool (its
# command line fixes the pool choices before the app is imported), and CELERY_CUSTOM_WORKER_POOL
# naming the class (worker_env), which `celery` resolves before it imports anything. A worker started
# in-process (`fleet worker`) resolves the name after this import: "custom" is the asyncio pool there.
if not _POOL_ALIASES.get("custom"):
    _POOL_ALIASES["custom"] = ASYNCIO_POOL
# redis-py 8 reads its own version from the installed metadata (importlib.metadata: a walk of
# sys.path) for every connection it opens; a tier worker with hundreds of threads opens hundreds.
redis.utils.get_lib_version = functools.cache(redis.utils.get_lib_version)
# redis-py 8 wraps its pools' get_connection in a check for deprecated arguments that builds a dict of
# the call's arguments on every command (about 5% of a tier worker's CPU under py-spy); it only warns.
for _pool in (redis.ConnectionPool, redis.BlockingConnectionPool):
    _pool.get_connection = getattr(_pool.get_connection, "__wrapped__", _pool.get_connection)  # type: ignore[method-assign]
# On RabbitMQ, the escalations worker turns dead letters into escalations (fleet/deadletters.py).
app.steps["consumer"].add(DeadLetters)


@after_setup_logger.connect
def _quiet_http_log(loglevel: int | str | None = None, **_: Any) -> None:
    """httpx logs every request at INFO: a line per model call, each taking the logging lock on the
    hot path. The fleet's attempts and spans record every call; a worker at DEBUG keeps httpx's."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if not isinstance(level, int) or level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


#: Celery's loggers of its two INFO lines per task: "Task ... received" and "Task ... succeeded in".
TASK_LINE_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_task_lines(queues: Iterable[str], settings: Settings) -> bool:
    """Set Celery's per-task INFO lines off when every queue the worker consumes says
    ``task_log_lines = false``; whether it did. Warnings and errors of tasks still log."""
    consumed = [settings.queues[q] for q in queues if q in settings.queues]
    if not consumed or any(q.task_log_lines for q in consumed):
        return False
    for name in TASK_LINE_LOGGERS:  # both read their level when the worker builds its consumer
        logging.getLogger(name).setLevel(logging.WARNING)
    return True


@worker_init.connect
def _before_worker_boot(sender: Any = None, **_: Any) -> None:
    worker_id()  # fixed in the main process, before the pool forks: its children are this worker
    runtime = get_runtime()
    queues = getattr(getattr(sender, "app", app).amqp.queues, "consume_from", None) or {}
    quiet_task_lines(queues, runtime.settings)
    runtime.emit("before_worker_boot", sender)


@worker_ready.connect
def _after_worker_boot(**_: Any) -> None:
    get_runtime().emit("after_worker_boot")


@worker_shutdown.connect
def _before_worker_shutdown(**_: Any) -> None:
    get_runtime().emit("before_worker_shutdown")


@worker_process_init.connect
def _after_process_boot(**_: Any) -> None:
    reset_runtime()  # a prefork child: the parent's clients must not cross the fork
    get_runtime().emit("after_process_boot")


@worker_process_shutdown.connect
def _before_process_shutdown(**_: Any) -> None:
    runtime = get_runtime()
    runtime.emit("before_process_shutdown")
    runtime.close()


#: Queues whose tasks make blocking HTTP calls the asyncio pool's loop cannot wait on (the notify and
#: callback webhooks, the batch lane's provider batch APIs): they run on threads.
_BLOCKING_QUEUES = frozenset({"escalations", "batch"})


def worker_env(pool: str) -> dict[str, str]:
    """Environment a worker process of ``pool`` needs beside :func:`worker_argv`'s arguments."""
    return {"CELERY_CUSTOM_WORKER_POOL": ASYNCIO_POOL} if pool == "asyncio" else {}


def worker_argv(
    queue: str,
    *,
    concurrency: int,
    pool: str,
    hostname: str | None = None,
    loglevel: str = "INFO",
    autoscale: tuple[int, int] | None = None,
) -> list[str]:
    """Arguments of ``celery -A fleet.worker`` for one pool consuming one queue.

    Raises:
        ConfigError: the pool needs a package that is not installed (gevent is not a dependency).
    """
    if pool == "gevent" and importlib.util.find_spec("gevent") is None:
        raise ConfigError(
            "pool 'gevent' needs the gevent package, which is not installed: `pip install gevent`, "
            'or use pool = "threads" (the default for tiers)',
            key=f"queues.{queue}.pool",
        )
    if pool == "asyncio" and queue in _BLOCKING_QUEUES:
        raise ConfigError(
            f"pool 'asyncio' cannot run the {queue} queue: its tasks make blocking HTTP calls "
            '(webhooks, batch APIs) that would stall every job of the process; use pool = "threads"',
            key=f"queues.{queue}.pool",
        )
    argv = [
        "worker",
        "--queues", queue,
        "--hostname", hostname or f"{queue}@%h",
        "--pool", "custom" if pool == "asyncio" else pool,
        "--loglevel", loglevel,
        "--task-events",
        "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    if autoscale:
        argv += ["--autoscale", f"{autoscale[1]},{autoscale[0]}"]
    else:
        argv += ["--concurrency", str(concurrency)]
    return argv
