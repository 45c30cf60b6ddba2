"""The message brokers the fleet runs on, and what differs between them (nothing in the task code).

- **Redis** (or Valkey; the default, embedded when no URL is set): messages and the fleet's state on
  one server. A message a dead worker held comes back through the fleet's reaper
  (:mod:`fleet.recovery`) in seconds, else after the visibility timeout.
- **RabbitMQ** (``broker.url = "amqp://..."``), for fleets that outgrow one Redis: every queue a
  quorum queue (durable, replicated by RabbitMQ), publisher confirms, instant redelivery when a
  consumer's channel closes, and ``x-delivery-limit`` set to ``limits.max_deliveries``: a message
  delivered more often is dead-lettered through the ``fleet.dead`` exchange into the ``fleet.dead``
  queue, which the escalations worker empties into the inbox (reason ``poison_message``). Redis still
  keeps the fleet's state (limits, breakers, locks, escalations, results): ``broker.redis_url``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kombu.entity import Exchange, Queue

from fleet.errors import BrokerError
from fleet.keys import QUEUES

if TYPE_CHECKING:
    from fleet.settings import Settings

__all__ = [
    "AMQP_SCHEMES",
    "DEAD_EXCHANGE",
    "DEAD_QUEUE",
    "REDIS_SCHEMES",
    "amqp_depths",
    "dead_letter_queue",
    "is_amqp",
    "is_redis",
    "queues",
    "transport_config",
]

REDIS_SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
#: Where RabbitMQ sends a message delivered more than ``limits.max_deliveries`` times.
DEAD_EXCHANGE = "fleet.dead"
DEAD_QUEUE = "fleet.dead"


def is_amqp(url: str) -> bool:
    return urlsplit(url).scheme in AMQP_SCHEMES


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_SCHEMES


def queues(settings: Settings, url: str) -> list[Queue]:
    """The fleet's queues on the broker at ``url``: quorum queues with a delivery limit and a
    dead-letter exchange on RabbitMQ; plain lists on Redis."""
    exchange = Exchange("fleet", type="direct")
    if not is_amqp(url):
        return [Queue(name, exchange, routing_key=name) for name in QUEUES]
    arguments = {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.limits.max_deliveries,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
    }
    return [
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments) for name in QUEUES
    ]


def dead_letter_queue() -> Queue:
    """The queue RabbitMQ dead-letters into (a quorum queue bound to the ``fleet.dead`` fanout exchange)."""
    return Queue(
        DEAD_QUEUE, Exchange(DEAD_EXCHANGE, type="fanout", durable=True), durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )  # fmt: skip


def amqp_depths(url: str, names: Iterable[str]) -> dict[str, int]:
    """Messages ready on each of ``names`` on RabbitMQ (0 for a queue not declared yet).

    Raises:
        BrokerError: RabbitMQ cannot be reached.
    """
    from kombu import Connection

    from fleet.settings import mask_url  # deferred: settings reads this module

    out: dict[str, int] = {}
    probe = Connection(url)
    unreachable: tuple[type[BaseException], ...] = (OSError, *probe.connection_errors)
    try:
        with Connection(url, connect_timeout=3) as conn:
            channel: Any = conn.channel()
            for name in names:
                try:
                    out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:  # 404: not declared yet (the channel closes with it)
                    out[name] = 0
                    channel = conn.channel()
    except unreachable as exc:
        raise BrokerError(f"cannot reach RabbitMQ at {mask_url(url)}: {exc}") from exc
    return out


def transport_config(settings: Settings, url: str) -> dict[str, Any]:
    """Celery's ``broker_transport_options`` (and friends) for the broker at ``url``."""
    if is_amqp(url):
        return {
            # Publisher confirms: send_task returns once RabbitMQ has the message (replicated).
            "broker_transport_options": {"confirm_publish": True},
            # A quorum queue has no global QoS: Celery's per-consumer prefetch instead.
            "worker_detect_quorum_queues": True,
            "broker_heartbeat": 10,
        }
    return {
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout(),
            # kombu sweeps for messages past their visibility timeout only every 10 x 10 s by default;
            # a job whose worker died must come back soon after the timeout, not minutes later.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout() // 4)),
            "unacked_restore_throttle": 1,
            "health_check_interval": settings.broker.health_check_interval,
            "socket_keepalive": True,
            "retry_on_timeout": True,
            "fleet_reliable_fetch": settings.recovery.reliable_fetch,
        }
    }
