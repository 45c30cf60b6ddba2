"""worker_argv: the Celery arguments of one pool, and a clear error for a pool that cannot start."""

from __future__ import annotations

import importlib.util

import pytest

from fleet import worker
from fleet.errors import ConfigError


def test_argv_names_the_queue_pool_and_size() -> None:
    argv = worker.worker_argv("full", concurrency=8, pool="threads", hostname="full@h")
    assert argv[:3] == ["worker", "--queues", "full"]
    assert argv[argv.index("--pool") : argv.index("--pool") + 2] == ["--pool", "threads"]
    assert "--task-events" in argv and argv[-2:] == ["--concurrency", "8"]
    assert worker.worker_argv("mini", concurrency=4, pool="threads", autoscale=(2, 10))[-2:] == [
        "--autoscale",
        "10,2",
    ]


def test_gevent_without_the_package_is_refused_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gevent" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"queues.mini.pool: pool 'gevent' needs the gevent package"):
        worker.worker_argv("mini", concurrency=200, pool="gevent")


def test_gevent_with_the_package_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "gevent" else real(name, *a)
    )
    assert "gevent" in worker.worker_argv("mini", concurrency=200, pool="gevent")


def test_asyncio_pool_is_celerys_custom_pool_and_refused_where_tasks_block() -> None:
    argv = worker.worker_argv("mini", concurrency=500, pool="asyncio")
    assert argv[argv.index("--pool") + 1] == "custom"
    assert worker.worker_env("asyncio") == {"CELERY_CUSTOM_WORKER_POOL": "fleet.asyncio_pool:AsyncioPool"}
    assert worker.worker_env("threads") == {}
    for queue in ("escalations", "batch"):
        with pytest.raises(ConfigError, match=rf"queues.{queue}.pool: pool 'asyncio' cannot run"):
            worker.worker_argv(queue, concurrency=2, pool="asyncio")
