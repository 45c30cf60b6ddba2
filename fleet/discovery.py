"""How a command finds the running fleet's broker.

``FLEET_REDIS_URL`` (or ``broker.redis_url``, or a Redis ``broker.url``, in config) wins.
Otherwise ``fleet up`` and ``fleet demo`` write ``<state_dir>/fleet.json`` with the URL of the
broker they started, and every other command in another terminal reads it from there, as long
as the process that wrote it is alive.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import redis

from fleet.boundary import BoundaryRedis
from fleet.brokers import is_amqp
from fleet.errors import FleetNotRunning
from fleet.procs import pid_alive
from fleet.settings import Settings

__all__ = [
    "REDIS_OPTIONS",
    "broker_url",
    "clear_state",
    "message_url",
    "read_state",
    "redis_client",
    "state_file",
    "write_state",
]


def state_file(settings: Settings) -> Path:
    return Path(settings.state_dir) / "fleet.json"


def read_state(settings: Settings) -> dict[str, Any] | None:
    """The running fleet's state file, or None when there is none or its writer has died."""
    path = state_file(settings)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not pid_alive(int(data.get("pid", 0))):
        return None
    return data


def write_state(settings: Settings, **fields: Any) -> Path:
    """Record this fleet's broker URL (and more) for commands in other terminals (mode 0600)."""
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), **fields}, fh)
    tmp.replace(path)
    return path


def clear_state(settings: Settings) -> None:
    state = read_state(settings)
    if state is None or state.get("pid") == os.getpid():
        state_file(settings).unlink(missing_ok=True)


def broker_url(settings: Settings) -> str:
    """The Redis URL of the fleet: its state, and its messages unless ``broker.url`` names a RabbitMQ
    (:func:`message_url`).

    Raises:
        FleetNotRunning: no URL is configured and no running fleet wrote one.
    """
    if settings.broker.redis_url:
        return settings.broker.redis_url
    if settings.broker.url and not is_amqp(settings.broker.url):
        return settings.broker.url
    state = read_state(settings)
    if state and state.get("redis_url"):
        return str(state["redis_url"])
    raise FleetNotRunning(
        f"no broker configured and no running fleet found under {settings.state_dir}/: "
        "start one with `fleet up` (in this directory) or set FLEET_REDIS_URL"
    )


def message_url(settings: Settings, redis_url: str) -> str:
    """Where the fleet's messages go: ``broker.url`` when it names a RabbitMQ, else its Redis."""
    url = settings.broker.url
    return url if url and is_amqp(url) else redis_url


#: Connection options of the fleet's own Redis clients (sync, and :mod:`fleet.aio`'s redis.asyncio):
#: give up connecting after 5 s, on a reply after 10 s; PING a connection idle for 25 s before use.
REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
    "health_check_interval": 25,
}


@lru_cache(maxsize=8)
def _client(url: str, pid: int, tls: tuple[tuple[str, Any], ...]) -> BoundaryRedis:
    pool = redis.ConnectionPool.from_url(url, **REDIS_OPTIONS, **dict(tls))
    client = BoundaryRedis(connection_pool=pool)
    client.fleet_url = url
    return client


def redis_client(settings: Settings, url: str | None = None) -> BoundaryRedis:
    """A pooled Redis client for this process (a new one after a fork); rediss:// is verified.

    Its commands raise :class:`fleet.errors.BrokerError` when the broker cannot be used
    (:mod:`fleet.boundary`), never a redis-py error.
    """
    url = url or broker_url(settings)
    tls = tuple(sorted(settings.redis_tls().items())) if url.startswith("rediss://") else ()
    return _client(url, os.getpid(), tls)
