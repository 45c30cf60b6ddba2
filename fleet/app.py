"""The Celery app and the queue topology.

The app is configured lazily from :func:`fleet.settings.get_settings` the first time its
configuration is read, so importing this module does no work. Producers import only this module
(they enqueue by task name); workers import :mod:`fleet.worker`, which registers the tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend
from kombu.transport import TRANSPORT_ALIASES as _TRANSPORT_ALIASES

from fleet import brokers, keys
from fleet.settings import Settings, get_settings

__all__ = [
    "ARGS_REPR",
    "BATCH_TASK",
    "CALLBACK_TASK",
    "EXECUTE_TASK",
    "LEGACY_NOTIFY_TASK",
    "NOTIFY_TASK",
    "RESULT_REPR_MAX",
    "ROUTE_TASK",
    "FleetCelery",
    "ResultBackend",
    "app",
    "celery_config",
    "create_app",
    "encode_result",
    "queue_result",
]

# The fleet's Redis transport (fleet/transport.py) in producers and workers alike: job priorities,
# reliable fetch, one Redis client per connection pool for kombu's commands.
_TRANSPORT_ALIASES["redis"] = _TRANSPORT_ALIASES["rediss"] = "fleet.transport:Transport"

#: Task names: producers and the router send by name and never import worker code.
ROUTE_TASK = "fleet.route"
EXECUTE_TASK = "fleet.execute"
NOTIFY_TASK = "fleet.notify"
CALLBACK_TASK = "fleet.callback"
BATCH_TASK = "fleet.batch"
#: The notify task's name before it was renamed: messages already queued under it still run.
LEGACY_NOTIFY_TASK = "fleet.escalate"
#: What a job message's args look like in events, logs and Flower: never the prompt (it may hold
#: anything), and no repr of a large request on every send.
ARGS_REPR = "(request, envelope)"
#: Longest repr of a task's result in events and log lines.
RESULT_REPR_MAX = 256


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, minus the subscription to a task's result channel that Celery
    opens whenever a task is sent: producers wait with :mod:`fleet.producer` (which also tells an
    unknown id from a pending one), so the subscription only cost a round trip and a thread."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def celery_config(settings: Settings, redis_url: str, broker_url: str | None = None) -> dict[str, Any]:
    """Celery settings for the fleet: JSON only, late acks, one message prefetched per slot. Messages
    go through ``broker_url`` (RabbitMQ, or by default the Redis at ``redis_url``); results and the
    fleet's state stay in Redis (:mod:`fleet.brokers`)."""
    messages = broker_url or redis_url
    tls: dict[str, Any] = {}
    if redis_url.startswith("rediss://"):
        tls["redis_backend_use_ssl"] = settings.redis_tls()
        if messages == redis_url:
            tls["broker_use_ssl"] = settings.redis_tls()
    return {
        **tls,
        **brokers.transport_config(settings, messages),
        "broker_url": messages,
        "result_backend": f"fleet.app:ResultBackend+{redis_url}",
        "result_backend_transport_options": {
            "health_check_interval": settings.broker.health_check_interval,
            "retry_policy": {"timeout": 5.0},
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A broker message must not be able to run code: JSON in, JSON out, nothing else accepted.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # Nothing lost: ack after the task body ran, requeue when the worker process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": brokers.queues(settings, messages),
        "task_default_queue": "router",
        "task_default_exchange": "fleet",
        "task_default_routing_key": "router",
        "task_create_missing_queues": False,
        "result_expires": settings.broker.result_expires_s,
        "result_extended": False,
        # No task-sent event: it is one more PUBLISH per send (a fifth of the router's task time, see
        # docs/performance.md), and Flower tracks every task from its task-received event on.
        "task_send_sent_event": False,
        "worker_send_task_events": True,
        "worker_consumer": "fleet.consumer:FleetConsumer",
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


class FleetCelery(Celery):
    """A Celery app that reads its configuration from the fleet's settings on first use."""

    def __init__(self, settings: Settings | None = None, redis_url: str | None = None, **kw: Any) -> None:
        self._fleet_settings = settings
        self._fleet_redis_url = redis_url
        super().__init__("fleet", set_as_current=False, **kw)
        # Celery sends this signal the first time its configuration is read; the settings are
        # loaded then, not at import (a producer may build the app long before it is used).
        self.on_configure.connect(self._configure, weak=False)

    @property
    def fleet_settings(self) -> Settings:
        if self._fleet_settings is None:
            self._fleet_settings = get_settings()
        return self._fleet_settings

    def _configure(self, **_: Any) -> None:
        from fleet.discovery import broker_url, message_url  # deferred: reads the state directory

        url = self._fleet_redis_url or broker_url(self.fleet_settings)
        # Loaded by Celery right after this hook returns, before any key is read.
        self.config_from_object(
            celery_config(self.fleet_settings, url, message_url(self.fleet_settings, url))
        )


def encode_result(app: Celery, task_id: str, result: dict[str, Any]) -> tuple[str, str, int | None]:
    """A task's SUCCESS result as Celery's Redis backend stores it: (key, value, expiry in seconds)."""
    encode, expires = _result_encoding(app)
    meta: dict[str, Any] = {
        "status": "SUCCESS",
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": datetime.now(UTC).isoformat(),
        "task_id": task_id,
    }
    value = encode(meta)
    return keys.result(task_id), value.decode() if isinstance(value, bytes) else str(value), expires


_ENCODING_LOCK = threading.Lock()


def _result_encoding(app: Celery) -> tuple[Callable[[Any], Any], int | None]:
    """The result backend's encoder and expiry, taken once per app and process.

    ``app.backend`` is a new backend for every thread (Celery keeps it thread-local), and each one is
    a new Redis connection pool whose first connection looks up redis-py's version on disk: with 1,000
    threads, a tenth of a tier worker's py-spy samples over a run's first waves. Encoding needs
    neither a connection nor a thread's own backend. The lock: a new worker's first thousand jobs
    arrive at once.
    """
    encoding: tuple[Callable[[Any], Any], int | None] | None = getattr(app, "_fleet_result_encoding", None)
    if encoding is None:
        with _ENCODING_LOCK:
            encoding = getattr(app, "_fleet_result_encoding", None)
            if encoding is None:
                backend: Any = app.backend
                expires = backend.expires
                encoding = (backend.encode, int(expires) if expires else None)
                app._fleet_result_encoding = encoding  # type: ignore[attr-defined]
    return encoding


def queue_result(app: Celery, pipe: Any, task_id: str, result: dict[str, Any]) -> None:
    """Queue on ``pipe`` the writes Celery's Redis backend makes for a task's SUCCESS result (the
    result key with its expiry, and a PUBLISH to anyone waiting on it).

    For results written together with other state in one round trip: a person's answer in the
    MULTI of its escalation's transition. Celery's own ``store_result`` would first read the key,
    then write it, in two more round trips.
    """
    key, value, expires = encode_result(app, task_id, result)
    pipe.set(key, value, ex=expires)
    pipe.publish(key, value)


def create_app(settings: Settings | None = None, redis_url: str | None = None) -> FleetCelery:
    """A new, lazily configured app (tests and clients that talk to more than one fleet)."""
    return FleetCelery(settings, redis_url)


#: The process-wide app: configured from the environment on first use.
app = create_app()
