"""What a worker process sets up once, not per task: one result encoder for all its threads, redis-py's
version looked up once, and no httpx line per model call unless the worker runs at DEBUG."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
import redis.utils
from celery.backends.redis import RedisBackend

from fleet import worker
from fleet.app import create_app, encode_result
from fleet.settings import load_settings


def test_threads_share_one_result_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's ``app.backend`` is a new backend (and Redis pool) per thread: encoding must not be."""
    built: list[int] = []
    real_init = RedisBackend.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(threading.get_ident())
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(RedisBackend, "__init__", counting_init)
    app = create_app(load_settings(env={"FLEET_REDIS_URL": "redis://127.0.0.1:1/0"}))
    values: list[tuple[str, str, int | None]] = []
    threads = [
        threading.Thread(target=lambda i=i: values.append(encode_result(app, f"t{i}", {"answer": i})))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert sorted(json.loads(v)["result"]["answer"] for _, v, _ in values) == list(range(8))
    assert {k for k, _, _ in values} == {f"celery-task-meta-t{i}" for i in range(8)}


def test_redis_version_is_looked_up_once() -> None:
    lookup: Any = redis.utils.get_lib_version  # functools.cache'd by fleet.worker
    assert lookup() == redis.__version__
    hits = lookup.cache_info().hits
    lookup()
    assert lookup.cache_info().hits == hits + 1


@pytest.mark.parametrize(("level", "quiet"), [("INFO", True), (logging.WARNING, True), ("DEBUG", False)])
def test_httpx_request_lines_only_at_debug(level: int | str, quiet: bool) -> None:
    httpx_log = logging.getLogger("httpx")
    before = httpx_log.level
    httpx_log.setLevel(logging.NOTSET)
    try:
        worker._quiet_http_log(loglevel=level)
        assert (httpx_log.level == logging.WARNING) is quiet
    finally:
        httpx_log.setLevel(before)


@pytest.fixture
def task_line_levels() -> Any:
    loggers = [logging.getLogger(name) for name in worker.TASK_LINE_LOGGERS]
    before = [lg.level for lg in loggers]
    yield loggers
    for lg, level in zip(loggers, before, strict=True):
        lg.setLevel(level)


def test_celerys_task_lines_are_off_only_where_every_consumed_queue_says_so(task_line_levels: Any) -> None:
    settings = load_settings(env={})
    assert not settings.queues["mini"].task_log_lines and settings.queues["router"].task_log_lines
    levels = [lg.level for lg in task_line_levels]
    # A worker on the router (and the tiers) keeps Celery's lines
    assert not worker.quiet_task_lines(["router", "mini"], settings)
    assert [lg.level for lg in task_line_levels] == levels
    # A tier worker drops them; a task's warnings and errors still log
    assert worker.quiet_task_lines(["mini", "full"], settings)
    assert all(lg.level == logging.WARNING for lg in task_line_levels)
