"""The fleet's kombu Redis channel: on a closed connection, a connection error Celery recovers from,
never the AttributeError it takes for an unrecoverable one (and exits every worker on); and writes
that ride with a publish (the router's record of a job)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from fleet import keys
from fleet.transport import Channel, writes_with_publish


def test_a_channel_of_a_closed_connection_raises_a_connection_error() -> None:
    # Given a channel whose connection closed: kombu sets the transport's client to None, and a
    # later restore of unacked messages (Celery closing the broken connection) builds a client
    channel = Channel.__new__(Channel)
    channel.connection = SimpleNamespace(client=None)
    # Then what comes out is a connection error, which kombu's ignore_errors and Celery's
    # reconnect loop handle
    with pytest.raises(redis.ConnectionError, match="closed"):
        channel._create_client()


#: A queue no worker consumes (the integration suite's fleets share the session's broker).
_QUEUE = "fleet-test-writes"


def _queue() -> Any:
    from kombu import Exchange, Queue

    return Queue(_QUEUE, Exchange(_QUEUE, type="direct"), routing_key=_QUEUE)


def _app(url: str) -> Any:
    from fleet.app import create_app
    from fleet.settings import load_settings

    return create_app(load_settings(env={"FLEET_REDIS_URL": url}), url)


def _mark(key: str) -> Any:
    def queue(pipe: Any) -> None:
        pipe.hset(key, "state", "routed")

    return queue


@pytest.mark.parametrize("priority", [None, 7])
def test_writes_with_a_publish_land_with_the_message(clean_redis: redis.Redis, priority: int | None) -> None:
    # Given the fleet's app on the test Redis, and a record to write ahead of a message
    app = _app(_url(clean_redis))
    state = redis.Redis(connection_pool=clean_redis.connection_pool)
    # When a message is published inside the block
    with writes_with_publish(state, _mark("fleet:job:w1")):
        app.send_task("fleet.noop", args=[1], task_id="w1", queue=_queue(), priority=priority)
    # Then the record and the message are both there (a priority message on its own list)
    assert clean_redis.hget("fleet:job:w1", "state") == b"routed"
    lists = [keys.queue_list(_QUEUE, p) for p in keys.PRIORITIES]
    assert sum(int(clean_redis.llen(name)) for name in lists) == 1


def test_writes_and_a_plain_publish_take_one_round_trip(
    clean_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a channel already set up (its first publish declares the queue), and a count of the
    # requests this process sends to Redis
    app = _app(_url(clean_redis))
    state = redis.Redis(connection_pool=clean_redis.connection_pool)
    sent: list[int] = []
    send = redis.connection.Connection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        send(self, command, check_health)

    with app.producer_or_acquire() as producer:
        app.send_task("fleet.noop", args=[0], queue=_queue(), producer=producer)
        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
        # When the record's write rides with the next publish
        with writes_with_publish(state, _mark("fleet:job:w2")):
            app.send_task("fleet.noop", args=[1], task_id="w2", queue=_queue(), producer=producer)
        monkeypatch.undo()
    # Then one request carried both, the record ahead of the message
    assert len(sent) == 1, len(sent)
    assert clean_redis.hget("fleet:job:w2", "state") == b"routed"
    assert clean_redis.llen(_QUEUE) == 2


def test_writes_go_first_where_the_messages_are_elsewhere(clean_redis: redis.Redis) -> None:
    # Given messages that do not go through this Redis (RabbitMQ): the record is written on entry
    state = redis.Redis(connection_pool=clean_redis.connection_pool)
    with writes_with_publish(state, _mark("fleet:job:w3"), merge=False):
        assert clean_redis.hget("fleet:job:w3", "state") == b"routed"


def test_a_block_that_publishes_nothing_says_so(clean_redis: redis.Redis) -> None:
    state = redis.Redis(connection_pool=clean_redis.connection_pool)
    with (
        pytest.raises(RuntimeError, match="no message was published"),
        writes_with_publish(state, _mark("w4")),
    ):
        pass
    assert clean_redis.exists("w4") == 0


@pytest.mark.parametrize("priority", [None, 7])
def test_a_task_that_publishes_drops_its_own_unacked_record_with_the_message(
    clean_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, priority: int | None
) -> None:
    from kombu import Connection

    from fleet.transport import Transport, ack_tag

    # Given a message this process consumed (unacked until acked), as the router's task holds one
    url = _url(clean_redis)
    app = _app(url)
    state = redis.Redis(connection_pool=clean_redis.connection_pool)
    with Connection(url, transport=Transport) as conn, app.producer_or_acquire() as producer:
        queue = _queue()
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=_QUEUE, declare=[queue])
        got: list[Any] = []
        with conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)], accept=["json"]):
            conn.drain_events(timeout=5)
        [held] = got
        tag = ack_tag(held.properties)
        assert tag == held.delivery_tag and clean_redis.hexists("unacked", tag)
        # When it publishes its next message with the record's writes
        with writes_with_publish(state, _mark("fleet:job:w5"), ack_tag=tag):
            app.send_task(
                "fleet.noop", args=[1], task_id="w5", queue=_queue(), producer=producer, priority=priority
            )
        merged = priority is None
        # Then a plain publish dropped the record with the message, and the ack sends nothing; a
        # priority message (its own round trips) leaves the ack to drop it
        assert clean_redis.hexists("unacked", tag) is not merged
        sent: list[int] = []
        send = redis.connection.Connection.send_packed_command
        monkeypatch.setattr(
            redis.connection.Connection, "send_packed_command",
            lambda self, command, check_health=True: sent.append(1) or send(self, command, check_health),
        )  # fmt: skip
        held.ack()
        monkeypatch.undo()
        assert (len(sent) == 0) is merged  # (the first ack of a channel also loads its script)
        assert not clean_redis.hexists("unacked", tag) and clean_redis.zscore("unacked_index", tag) is None
    for name in keys.queue_lists(_QUEUE):
        clean_redis.delete(name)


def test_a_process_that_acks_nothing_never_drops_a_record_early() -> None:
    from fleet import transport

    # A producer, or a prefork child whose parent acks: no fleet QoS acks in this process
    real = transport._acking_pid
    try:
        transport._acking_pid = None
        assert transport.ack_tag({"delivery_tag": "t1"}) is None
        transport._acking_pid = os.getpid()
        assert transport.ack_tag({"delivery_tag": "t1"}) == "t1"
        assert transport.ack_tag({}) is None and transport.ack_tag(None) is None
    finally:
        transport._acking_pid = real


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"
