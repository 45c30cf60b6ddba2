"""A RabbitMQ of the test's own: a fresh virtual host on the server ``FLEET_TEST_AMQP_URL`` names
(made and deleted with ``rabbitmqctl`` when it is there and permitted), else that URL's own vhost,
emptied of the fleet's queues first."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import quote, urlsplit, urlunsplit

from kombu import Connection

from fleet.brokers import DEAD_QUEUE
from fleet.keys import QUEUES

__all__ = ["AMQP_ENV", "amqp_skip_reason", "rabbit_vhost"]

#: The switch that runs the RabbitMQ tests (.ci/run sets it when 127.0.0.1:5672 answers).
AMQP_ENV = "FLEET_TEST_AMQP_URL"


def amqp_skip_reason() -> str | None:
    url = os.environ.get(AMQP_ENV)
    if not url:
        return f"{AMQP_ENV} is not set: no RabbitMQ to test against"
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:
        return f"{AMQP_ENV}={url} does not answer: {exc}"
    return None


def _ctl(*args: str) -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60, check=False)
    return done.returncode == 0


@contextmanager
def rabbit_vhost(base: str | None = None) -> Iterator[str]:
    """The AMQP URL of a virtual host of its own on ``base`` (default: ``FLEET_TEST_AMQP_URL``)."""
    base = base or os.environ[AMQP_ENV]
    parts = urlsplit(base)
    vhost = f"fleet-test-{uuid.uuid4().hex[:8]}"
    user = parts.username or "guest"
    if _ctl("add_vhost", vhost) and _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
        try:
            yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
        finally:
            _ctl("delete_vhost", vhost)
        return
    with Connection(base, connect_timeout=3) as conn:  # the URL's own vhost: start without leftovers
        for name in (*QUEUES, DEAD_QUEUE):
            with suppress(conn.channel_errors):
                conn.channel().queue_delete(name)
    yield base
