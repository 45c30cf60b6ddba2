"""The one place where the broker libraries' errors become the fleet's (httpx's ``map_httpcore_exceptions``).

redis-py, kombu and Celery each raise their own errors when the broker is away, slow or refuses us.
:data:`BROKER_ERROR_MAP` says, once, which of them mean "the broker cannot be used" and how to say
so; :func:`translate` turns one into a :class:`fleet.errors.BrokerError` naming the broker (its
password masked) in one line. Two ways in:

- :class:`BoundaryRedis`, the client :func:`fleet.discovery.redis_client` hands out: every command,
  pipeline and script of the fleet's own Redis traffic raises ``BrokerError``, never a redis error;
- :func:`broker_errors`, a context manager around calls into kombu and Celery (publishing a message,
  a remote-control broadcast).

Errors that are not about reaching the broker pass through untouched: ``WatchError`` is optimistic
locking's control flow, ``ResponseError`` a bug to see, ``NoScriptError`` handled by redis-py itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu import exceptions as kombu_exceptions
from redis import exceptions as redis_exceptions
from redis.client import Pipeline

from fleet.errors import BrokerError
from fleet.settings import mask_url

__all__ = [
    "BROKER_ERRORS",
    "BROKER_ERROR_MAP",
    "BoundaryPipeline",
    "BoundaryRedis",
    "broker_errors",
    "is_broker_error",
    "translate",
]

#: Third-party error -> what it means, most specific first. ``BrokerError`` is raised for each.
BROKER_ERROR_MAP: tuple[tuple[type[BaseException], str], ...] = (
    (redis_exceptions.AuthenticationError, "it refused our credentials"),
    (redis_exceptions.AuthorizationError, "our user may not run that command"),
    (redis_exceptions.BusyLoadingError, "it is still loading its data"),
    (redis_exceptions.ReadOnlyError, "it is a read-only replica"),
    (redis_exceptions.TimeoutError, "it did not answer in time"),
    (redis_exceptions.ConnectionError, "cannot connect"),
    (kombu_exceptions.OperationalError, "cannot connect"),
    (ConnectionError, "cannot connect"),
    (TimeoutError, "it did not answer in time"),
)
_MAPPED: tuple[type[BaseException], ...] = tuple(cls for cls, _ in BROKER_ERROR_MAP)
#: For ``except`` clauses: every error that means the broker cannot be used, translated or not.
BROKER_ERRORS: tuple[type[BaseException], ...] = (*_MAPPED, BrokerError)
# redis-py leaves these untyped; called through Any so the overrides below stay typed.
_redis_execute: Any = redis.Redis.execute_command
_pipeline_immediate: Any = Pipeline.immediate_execute_command


def is_broker_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the broker cannot be used (an entry of :data:`BROKER_ERROR_MAP`)."""
    return isinstance(exc, BROKER_ERRORS)


def translate(exc: BaseException, url: str | None) -> BrokerError:
    """The :class:`BrokerError` for a mapped error: one line, the broker's URL with its password masked."""
    if isinstance(exc, BrokerError):
        return exc
    what = next((meaning for cls, meaning in BROKER_ERROR_MAP if isinstance(exc, cls)), "cannot use it")
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    where = f" at {mask_url(url)}" if url else ""
    return BrokerError(f"the broker{where} cannot be used: {what} ({detail})")


@contextmanager
def broker_errors(url: str | None) -> Iterator[None]:
    """Raise :class:`BrokerError` for any mapped error raised inside the block."""
    try:
        yield
    except _MAPPED as exc:
        raise translate(exc, url) from exc


class BoundaryPipeline(Pipeline):
    """A pipeline whose round trips raise :class:`BrokerError` for an unusable broker."""

    fleet_url: str | None = None

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except _MAPPED as exc:
            raise translate(exc, self.fleet_url) from exc

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return _pipeline_immediate(self, *args, **options)
        except _MAPPED as exc:
            raise translate(exc, self.fleet_url) from exc


class BoundaryRedis(redis.Redis):
    """A Redis client whose commands raise :class:`BrokerError` for an unusable broker."""

    fleet_url: str | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return _redis_execute(self, *args, **options)
        except _MAPPED as exc:
            raise translate(exc, self.fleet_url) from exc

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> BoundaryPipeline:
        pipe = BoundaryPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.fleet_url = self.fleet_url
        return pipe
