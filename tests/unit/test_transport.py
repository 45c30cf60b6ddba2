"""The fleet's kombu Redis channel on a closed connection: a connection error Celery recovers from,
never the AttributeError it takes for an unrecoverable one (and exits every worker on)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis

from fleet.transport import Channel


def test_a_channel_of_a_closed_connection_raises_a_connection_error() -> None:
    # Given a channel whose connection closed: kombu sets the transport's client to None, and a
    # later restore of unacked messages (Celery closing the broken connection) builds a client
    channel = Channel.__new__(Channel)
    channel.connection = SimpleNamespace(client=None)
    # Then what comes out is a connection error, which kombu's ignore_errors and Celery's
    # reconnect loop handle
    with pytest.raises(redis.ConnectionError, match="closed"):
        channel._create_client()
