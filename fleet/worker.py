"""What a worker process imports: the app with its tasks registered (``celery -A fleet.worker``), the
fleet's pool and transport, and Celery's worker signals wired to the middlewares' lifecycle hooks."""

from __future__ import annotations

import importlib.util
from typing import Any

import celery.concurrency
from celery.signals import (
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

__all__ = ["app", "worker_argv"]

_POOL_ALIASES: dict[str, str] = celery.concurrency.ALIASES  # type: ignore[attr-defined]  # not in the stubs
# `--pool threads` means our resizable threads pool in every fleet worker (fleet scale grows it).
_POOL_ALIASES["threads"] = "fleet.pool:ResizableThreadPool"
# On RabbitMQ, the escalations worker turns dead letters into escalations (fleet/deadletters.py).
app.steps["consumer"].add(DeadLetters)


@worker_init.connect
def _before_worker_boot(sender: Any = None, **_: Any) -> None:
    worker_id()  # fixed in the main process, before the pool forks: its children are this worker
    get_runtime().emit("before_worker_boot", sender)


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
    argv = [
        "worker",
        "--queues", queue,
        "--hostname", hostname or f"{queue}@%h",
        "--pool", pool,
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
