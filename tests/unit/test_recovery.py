"""Recovery's parts on a real Redis: a lock holder judged by its heartbeat, the reaper of orphaned
unacked messages and of in-flight lists, and reliable fetch in the fleet's kombu transport."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from fleet import keys, scripts
from fleet import transport as fleet_transport
from fleet.recovery import Beat, Liveness, Reaper, restore_orphan, worker_id
from fleet.transport import Transport

from ..conftest import flush_fleet_keys, other_db_url

TTL_S = 12.0


@pytest.fixture
def quiet_url(broker_url: str) -> str:
    """A database no test fleet's workers consume from (they would take the messages put back)."""
    return other_db_url(other_db_url(other_db_url(broker_url)))


@pytest.fixture
def clean_redis(quiet_url: str) -> Iterator[redis.Redis]:
    flush_fleet_keys(quiet_url)
    client = redis.Redis.from_url(quiet_url)
    yield client
    client.close()


def _beat(client: redis.Redis, worker: str, jobs: list[str], tags: list[str] | None = None) -> None:
    client.set(keys.worker(worker), Beat(worker, time.time(), tags or [], jobs).dumps(), px=int(TTL_S * 1000))
    client.sadd(keys.workers(), worker)


class TestLiveness:
    def test_a_holder_without_a_heartbeat_is_gone(self, clean_redis: redis.Redis) -> None:
        assert not Liveness(clean_redis, TTL_S).holds("host:1:aa#0", "t1", 0.1)

    def test_a_holder_whose_heartbeat_lists_the_job_holds_it(self, clean_redis: redis.Redis) -> None:
        _beat(clean_redis, "host:1:aa", ["t1@0"])
        assert Liveness(clean_redis, TTL_S).holds("host:1:aa#0", "t1", 600.0)

    def test_a_heartbeat_written_after_the_lock_without_the_job_proves_it_stale(
        self, clean_redis: redis.Redis
    ) -> None:
        # Given a live worker whose latest heartbeat (just now) does not list the job
        _beat(clean_redis, "host:1:aa", ["other@0"])
        live = Liveness(clean_redis, TTL_S)
        # Then a lock it took 5 s ago is stale (its pool process died), but one it took just now is
        # not judged yet: the heartbeat may predate it
        assert not live.holds("host:1:aa#0", "t1", 5.0)
        assert live.holds("host:1:aa#0", "t1", 0.2)

    def test_a_lock_names_its_delivery_and_a_later_copy_does_not_vouch_for_it(
        self, clean_redis: redis.Redis
    ) -> None:
        # Given a worker that took the lock for the job's first delivery (its pool process died since),
        # and now holds a requeued copy of the same job (Celery's retry: retries 1, waiting for its
        # countdown)
        _beat(clean_redis, "host:1:aa", ["t1@1"])
        live = Liveness(clean_redis, TTL_S)
        # Then the first delivery's lock is stale once a heartbeat written after it leaves it out; a
        # lock of the copy is held
        assert not live.holds("host:1:aa#0", "t1", 5.0)
        assert live.holds("host:1:aa#1", "t1", 5.0)


class TestReaper:
    def _unacked(self, client: redis.Redis, tag: str, age_s: float) -> None:
        payload = json.dumps([{"body": "x", "properties": {"delivery_tag": tag}}, "fleet", "mini"])
        client.hset("unacked", tag, payload)
        client.zadd("unacked_index", {tag: time.time() - age_s})

    def test_only_old_messages_no_live_worker_holds_are_restored(self, clean_redis: redis.Redis) -> None:
        # Given three unacked messages: one held by a live worker, one young, one orphaned
        self._unacked(clean_redis, "held", 60)
        self._unacked(clean_redis, "young", 1)
        self._unacked(clean_redis, "orphan", 60)
        _beat(clean_redis, "host:1:aa", ["t1"], tags=["held"])
        clean_redis.sadd(keys.workers(), "host:2:gone")  # a worker whose heartbeat lapsed
        restored: list[str] = []
        # When the reaper runs
        count = Reaper(clean_redis, restored.append, orphan_after_s=12).reap()
        # Then only the orphan goes back, and the lapsed worker leaves the set
        assert restored == ["orphan"] and count == 1
        assert clean_redis.smembers(keys.workers()) == {b"host:1:aa"}

    def test_an_idle_in_flight_list_goes_back_on_its_queue(self, clean_redis: redis.Redis) -> None:
        # Given a message lost on its way to a worker (in its in-flight list), and a fresh one
        lost = keys.inflight("host:3:bb", "reaper-test")  # a queue no session worker consumes
        clean_redis.lpush(lost, "lost-message")
        clean_redis.sadd(keys.inflight_index(), lost, keys.inflight("host:4:cc", "fast"))
        # When the reaper runs before the list has been idle long enough, nothing moves
        assert Reaper(clean_redis, lambda tag: None, orphan_after_s=12).reap() == 0
        assert clean_redis.llen("reaper-test") == 0
        # Then once it is idle past orphan_after_s, its message is back on its queue, and the empty
        # list of a worker that is gone leaves the index
        assert Reaper(clean_redis, lambda tag: None, orphan_after_s=0).reap() == 1
        assert clean_redis.lrange("reaper-test", 0, -1) == [b"lost-message"]
        assert not clean_redis.exists(lost)
        assert clean_redis.smembers(keys.inflight_index()) == {lost.encode()}


def test_an_orphan_goes_back_under_a_new_tag_so_a_late_ack_of_the_old_one_is_harmless(
    clean_redis: redis.Redis,
) -> None:
    # Given an orphaned message of the full queue (its worker was cut off), as kombu records it
    message = {"body": "e30=", "headers": {"id": "t1"},
               "properties": {"delivery_tag": "old", "delivery_info": {"exchange": "fleet"}}}  # fmt: skip
    clean_redis.hset("unacked", "old", json.dumps([message, "fleet", "full"]))
    clean_redis.zadd("unacked_index", {"old": time.time() - 60})
    # When it is restored
    restore_orphan(clean_redis)("old")
    # Then it is at the head of its queue, redelivered, under a new tag, and no longer unacked
    [raw] = clean_redis.lrange("full", 0, -1)
    back = json.loads(raw)
    assert back["properties"]["delivery_tag"] != "old"
    assert back["properties"]["delivery_info"]["redelivered"] and back["headers"]["redelivered"]
    assert not clean_redis.hexists("unacked", "old") and clean_redis.zcard("unacked_index") == 0


def test_an_orphan_goes_back_to_the_list_of_its_priority(clean_redis: redis.Redis) -> None:
    message = {"body": "e30=", "properties": {"delivery_tag": "old9", "priority": 9, "delivery_info": {}}}
    clean_redis.hset("unacked", "old9", json.dumps([message, "fleet", "fast"]))
    restore_orphan(clean_redis)("old9")
    assert clean_redis.llen(keys.queue_list("fast", 9)) == 1 and clean_redis.llen("fast") == 0


def test_a_message_of_another_queue_is_left_to_kombu(clean_redis: redis.Redis) -> None:
    message = {"body": "e30=", "properties": {"delivery_tag": "x"}}
    clean_redis.hset("unacked", "x", json.dumps([message, "", "celery.pidbox"]))
    restore_orphan(clean_redis)("x")
    assert clean_redis.hexists("unacked", "x")


@pytest.fixture
def connection(quiet_url: str, clean_redis: redis.Redis) -> Iterator[Connection]:
    """The fleet's transport, with reliable fetch."""
    with Connection(quiet_url, transport=Transport, transport_options={"fleet_reliable_fetch": True}) as conn:
        yield conn


@pytest.fixture(params=[True, False], ids=["reliable_fetch", "brpop"])
def any_connection(
    request: pytest.FixtureRequest, quiet_url: str, clean_redis: redis.Redis
) -> Iterator[Connection]:
    """The fleet's transport, with reliable fetch and without (kombu's BRPOP)."""
    options = {"fleet_reliable_fetch": request.param}
    with Connection(quiet_url, transport=Transport, transport_options=options) as conn:
        yield conn


def _consume(conn: Connection, queue: Queue, prefetch: int | None = None) -> list[Message]:
    """What one fetch of a consumer with ``prefetch`` delivers (a take brings up to the free prefetch)."""
    got: list[Message] = []
    callbacks = [lambda body, message: got.append(message)]
    with conn.Consumer(queue, callbacks=callbacks, accept=["json"], prefetch_count=prefetch):
        conn.drain_events(timeout=5)
    return got


def test_reliable_fetch_records_a_message_as_unacked_and_leaves_no_copy(
    connection: Connection, clean_redis: redis.Redis
) -> None:
    queue = Queue("rf", Exchange("rf", type="direct"), routing_key="rf")
    connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="rf", declare=[queue])
    [message] = _consume(connection, queue)
    inflight = keys.inflight(worker_id(), "rf")
    # The message went through this worker's in-flight list, which it left in the same transaction
    # that recorded it as unacked
    assert clean_redis.sismember(keys.inflight_index(), inflight)
    assert clean_redis.llen(inflight) == 0 and clean_redis.llen("rf") == 0
    assert clean_redis.hexists("unacked", message.delivery_tag)
    assert clean_redis.zscore("unacked_index", message.delivery_tag) is not None
    message.ack()
    assert not clean_redis.hexists("unacked", message.delivery_tag)
    assert clean_redis.zscore("unacked_index", message.delivery_tag) is None


def test_a_take_records_its_message_as_unacked_in_the_same_round_trip(
    connection: Connection, clean_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker's QoS whose scripts are counted (the record was a script of its own before)
    sent: list[str] = []
    original = fleet_transport.QoS._script
    monkeypatch.setattr(
        fleet_transport.QoS, "_script", lambda qos, name: sent.append(name) or original(qos, name)
    )
    queue = Queue("rf4", Exchange("rf4ex", type="direct"), routing_key="rf4")
    connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="rf4", declare=[queue])
    # When a message is taken
    [message] = _consume(connection, queue)
    # Then its record, as kombu writes it, was made by the take: no script of the worker's made it
    assert sent == []
    payload, exchange, routing_key = json.loads(clean_redis.hget("unacked", message.delivery_tag) or b"")
    assert (payload, exchange, routing_key) == (message._raw, "rf4ex", "rf4")  # type: ignore[attr-defined]
    assert abs((clean_redis.zscore("unacked_index", message.delivery_tag) or 0) - time.time()) < 5
    message.ack()
    assert sent == ["unacked_drop"] and not clean_redis.hexists("unacked", message.delivery_tag)


def _take(
    client: redis.Redis, queue: str, worker: str, at: float | None = None, count: int = 1
) -> list[bytes | int] | None:
    """The take script, by hand (at ``at`` by the worker's clock, up to ``count`` messages): a fetch
    whose reply never reached its worker."""
    take_keys = [*keys.queue_lists(queue), keys.inflight(worker, queue), "unacked_index", "unacked"]
    taken: list[bytes | int] | None = client.eval(
        scripts.source("priority_take"), len(take_keys), *take_keys, at or time.time(), count
    )
    return taken


def test_a_take_whose_reply_was_lost_is_unacked_and_the_reaper_gives_it_back(
    connection: Connection, clean_redis: redis.Redis
) -> None:
    # Given a message taken a minute ago by a worker that never got the reply (its link went down)
    queue = Queue("mini", Exchange("mini", type="direct"), routing_key="mini")  # a queue of the fleet's
    connection.Producer().publish({"n": "lost"}, exchange=queue.exchange, routing_key="mini", declare=[queue])
    taken = _take(clean_redis, "mini", "host:9:lost", at=time.time() - 60)
    assert taken is not None and taken[0] == 0 and taken[2] == 1 and len(taken) == 3
    [tag] = clean_redis.hkeys("unacked")
    # When the reaper runs (no live worker says it holds it; it is older than orphan_after_s)
    assert Reaper(clean_redis, restore_orphan(clean_redis), orphan_after_s=12).reap() == 1
    # Then it is back on its queue, and is delivered again
    assert not clean_redis.hexists("unacked", tag)
    [again] = _consume(connection, queue)
    assert again.decode() == {"n": "lost"}
    again.ack()


def test_a_message_that_is_not_kombus_goes_to_the_in_flight_list_unrecorded(clean_redis: redis.Redis) -> None:
    # Given messages a take cannot read a delivery tag from
    for raw in (
        b"not json",
        b'{"properties": {}}',
        b'{"properties": {"delivery_tag": 7, "delivery_info": {}}}',
    ):
        clean_redis.lpush("rf6", raw)
        # When it is taken, it is in the worker's in-flight list, not recorded (the worker records it)
        assert _take(clean_redis, "rf6", "host:9:me") == [0, raw, 0]
        assert clean_redis.lrange(keys.inflight("host:9:me", "rf6"), 0, -1) == [raw]
        assert clean_redis.hlen("unacked") == 0
        clean_redis.delete(keys.inflight("host:9:me", "rf6"))
    assert _take(clean_redis, "rf6", "host:9:me") is None


def test_a_delivery_lost_on_its_way_goes_back_at_the_next_one(
    connection: Connection, clean_redis: redis.Redis
) -> None:
    # Given a message whose delivery to this worker was lost (still in its in-flight list)
    queue = Queue("rf2", Exchange("rf2", type="direct"), routing_key="rf2")
    producer = connection.Producer()
    producer.publish({"n": "lost"}, exchange=queue.exchange, routing_key="rf2", declare=[queue])
    inflight = keys.inflight(worker_id(), "rf2")
    assert clean_redis.lmove("rf2", inflight, "RIGHT", "LEFT") is not None
    # When the next message is delivered
    producer.publish({"n": "next"}, exchange=queue.exchange, routing_key="rf2")
    [message] = _consume(connection, queue)
    # Then the lost one is back on its queue, to be consumed next
    assert message.decode() == {"n": "next"}
    assert clean_redis.llen(inflight) == 0
    [back] = _consume(connection, queue)
    assert back.decode() == {"n": "lost"}


def test_the_most_urgent_message_is_taken_first_and_equals_in_order(
    any_connection: Connection, clean_redis: redis.Redis
) -> None:
    connection = any_connection
    # Given a backlog of normal messages, then urgent ones sent last
    queue = Queue("pq", Exchange("pq", type="direct"), routing_key="pq")
    producer = connection.Producer()
    sent = [("a", 0), ("b", 0), ("c", 0), ("d", 5), ("e", 9), ("f", 9), ("g", 0)]
    for name, priority in sent:
        producer.publish(
            {"n": name}, exchange=queue.exchange, routing_key="pq", declare=[queue], priority=priority
        )
    # Then each waits on its priority's list
    assert [clean_redis.llen(name) for name in keys.queue_lists("pq")] == [2, 0, 0, 0, 1, 0, 0, 0, 0, 4]
    # When a worker takes them, three at most at a time (its prefetch)
    order = []
    while len(order) < len(sent):
        taken = _consume(connection, queue, prefetch=3)
        assert 1 <= len(taken) <= 3
        for message in taken:
            order.append(message.decode()["n"])
            message.ack()
    # Then the most urgent come first, and messages of one priority in the order they were sent
    assert order == ["e", "f", "d", "a", "b", "c", "g"]


def _numbered(connection: Connection, name: str, count: int) -> Queue:
    """Queue ``name`` holding ``count`` messages, ``{"n": 0}`` first."""
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    producer = connection.Producer()
    for n in range(count):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key=name, declare=[queue])
    return queue


def test_a_take_brings_up_to_the_free_prefetch_in_one_round_trip(
    connection: Connection, clean_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given six messages, and a worker whose fetches are counted
    queue = _numbered(connection, "bt", 6)
    counts: list[int] = []
    original = fleet_transport.Channel._take_count
    monkeypatch.setattr(
        fleet_transport.Channel, "_take_count", lambda channel: counts.append(original(channel)) or counts[-1]
    )
    # When a consumer with a prefetch of four fetches once
    taken = _consume(connection, queue, prefetch=4)
    # Then one take brought four, in order, each recorded as unacked; two wait on the queue
    assert counts == [4]
    assert [m.decode()["n"] for m in taken] == [0, 1, 2, 3]
    assert sorted(t.decode() for t in clean_redis.hkeys("unacked")) == sorted(m.delivery_tag for m in taken)
    assert clean_redis.llen("bt") == 2
    for message in taken:
        message.ack()
    assert clean_redis.hlen("unacked") == 0


def test_a_take_whose_delivery_fails_gives_back_the_messages_after_it(
    connection: Connection, clean_redis: redis.Redis
) -> None:
    # Given three messages, and a consumer whose second delivery raises
    queue = _numbered(connection, "bf", 3)
    got: list[Message] = []

    def deliver(body: dict[str, int], message: Message) -> None:
        if body["n"] == 1:
            raise RuntimeError("a broken callback")
        got.append(message)

    # When one take brings all three
    with (
        connection.Consumer(queue, callbacks=[deliver], accept=["json"], prefetch_count=3),
        pytest.raises(RuntimeError),
    ):
        connection.drain_events(timeout=5)
    # Then the one after the failure is back on its queue, unrecorded; the failed one is the worker's
    # (recorded and held, as with a single take); the first was delivered
    assert [m.decode()["n"] for m in got] == [0]
    [back] = clean_redis.lrange("bf", 0, -1)
    assert json.loads(back)["body"] == base64.b64encode(b'{"n": 2}').decode()
    assert clean_redis.hlen("unacked") == 2


def test_an_urgent_message_to_an_idle_queue_reaches_a_waiting_worker_at_once(
    any_connection: Connection, clean_redis: redis.Redis
) -> None:
    connection = any_connection
    queue = Queue("pq2", Exchange("pq2", type="direct"), routing_key="pq2")
    got: list[Message] = []
    with connection.Consumer(queue, callbacks=[lambda body, message: got.append(message)], accept=["json"]):
        # Given a worker that found the queue empty and now waits on it
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.3)
        # When an urgent message arrives at the idle queue
        connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="pq2", priority=9)
        started = time.monotonic()
        connection.drain_events(timeout=5)
        took = time.monotonic() - started
    # Then it went where the worker waits (the plain list), and the worker had it without waiting out
    # its poll (a second)
    assert clean_redis.llen(keys.queue_list("pq2", 9)) == 0
    assert [m.decode() for m in got] == [{"n": 1}] and took < 0.5
    got[0].ack()


def test_a_queue_has_a_list_per_priority_the_most_urgent_first() -> None:
    assert keys.queue_list("mini", 0) == "mini" and keys.queue_list("mini", 9) == "mini\x06\x169"
    assert keys.queue_lists("mini")[0] == "mini\x06\x169" and keys.queue_lists("mini")[-1] == "mini"
    assert len(set(keys.queue_lists("mini"))) == 10
    assert [keys.priority(v) for v in (None, "x", -3, 0, 4, "7", 12, 2.5)] == [0, 0, 0, 0, 4, 7, 9, 0]


def test_the_take_script_is_sent_whole_again_when_the_server_lost_it(
    connection: Connection, clean_redis: redis.Redis
) -> None:
    # Given a worker that fetched once (the server has its take script: it fetches by EVALSHA now)
    queue = Queue("pq3", Exchange("pq3", type="direct"), routing_key="pq3")
    producer = connection.Producer()
    producer.publish({"n": 1}, exchange=queue.exchange, routing_key="pq3", declare=[queue])
    [first] = _consume(connection, queue)
    first.ack()
    assert connection.default_channel._take_loaded
    # When the server forgets its scripts (a restart does), and the next message arrives
    clean_redis.script_flush()
    producer.publish({"n": 2}, exchange=queue.exchange, routing_key="pq3")
    got: list[Message] = []
    with connection.Consumer(queue, callbacks=[lambda body, message: got.append(message)], accept=["json"]):
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.5)
    # Then it is still delivered (the NOSCRIPT reply made the next take send the script whole)
    assert [m.decode() for m in got] == [{"n": 2}]
    got[0].ack()
