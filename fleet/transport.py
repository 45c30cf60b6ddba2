"""kombu's Redis transport, as workers use it: one client for a channel's synchronous commands, and
reliable fetch.

kombu builds a new ``redis.Redis`` for every ack, every unacked-index update and every publish
(``Channel.conn_or_acquire``), and redis-py's constructor builds the client's response-callback
tables each time: about a seventh of a worker's main-process CPU at load, and a share of every
router publish (docs/performance.md). A ``redis.Redis`` over a connection pool is thread-safe (each
command takes a connection from the pool), so one per pool serves them all. A new pool (after a
fork or a reconnect) gets a new client. :mod:`fleet.app` registers this transport for the
``redis://`` and ``rediss://`` schemes, in producers and workers alike.

**Priority** (a job's ``priority``, 0 to 9, 9 the most urgent; the AMQP convention, where kombu's
own Redis transport serves 0 first). A queue's messages of priority ``p > 0`` wait in a list of their
own (:func:`fleet.keys.queue_list`), and a worker looks at the lists most urgent first. A message of
priority ``p > 0`` sent to an idle queue (every list empty) goes on the plain list, where a waiting
worker takes it at once (``priority_put.lua``): BLMOVE, below, waits on one list only.

**Reliable fetch** (``recovery.reliable_fetch``, on by default; Redis >= 6.2). kombu takes a
message with BRPOP, which removes it from its queue, and records it as unacked only once the reply
has reached the worker: a reply lost on the way (the worker's link went down, its connection was
closed) loses the message. A worker that consumes one queue takes it with BLMOVE instead, into its
in-flight list (:func:`fleet.keys.inflight`), and drops it from there in the same transaction that
records it as unacked. Whatever else is in that list was lost on the way: the worker puts it back on
its queue at its next delivery, and the reaper (:mod:`fleet.recovery`) puts back the contents of any
in-flight list idle for ``recovery.orphan_after_s``. The same idea as Sidekiq Pro's super_fetch.
A worker on several queues keeps kombu's BRPOP (one BLMOVE takes from one list).

With priorities, a fetch is first a script that takes the oldest messages of the most urgent
non-empty lists (``priority_take.lua``: up to :data:`TAKE_MAX`, within the worker's free prefetch)
and writes kombu's unacked record of each in the same step, where kombu (and a BLMOVE) take a second
round trip per message once it has arrived: a message whose reply is lost on the way is then unacked
and held by no live worker, and the reaper gives it back after ``recovery.orphan_after_s``. Only
when the queue is empty does the worker wait, with BLMOVE on the plain list (recorded as above), and
after that wait it looks at every list again. A message that goes back from an in-flight list (a
lost delivery, an orphan) goes to the head of the plain list: its priority is not kept in that rare
case.

**Writes with a publish** (:func:`writes_with_publish`). The router writes a job's record (state
``routed``) before it sends the job on, so the tier's ``running`` is never overwritten by it: two
round trips per job. Where the channel allows, the record's commands go in the same pipeline as the
message's LPUSH, ahead of it: one round trip, the same order (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic, sleep
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads

from fleet import keys, scripts

__all__ = [
    "PRIORITY_STEPS",
    "Channel",
    "QoS",
    "Transport",
    "ack_tag",
    "dropped_with_writes",
    "give_back",
    "unacked_drop",
    "writes_with_publish",
]

#: kombu's Redis transport, most of which its type stubs leave out.
_kombu: Any = kombu_redis
#: kombu's own client factory (private).
_kombu_create_client: Any = _kombu.Channel._create_client

#: The process whose consumer acks through the fleet's QoS (a worker's main process; its threads and
#: asyncio pools run tasks there too). A prefork child, or a producer, never skips an ack's writes.
_acking_pid: int | None = None
#: Delivery tags whose unacked record a task already dropped with its last writes: their ack skips
#: its round trip. Bounded: a tag whose ack never comes (its channel closed) ages out.
_dropped: OrderedDict[str, None] = OrderedDict()
_DROPPED_MAX = 10_000
_KEPT = object()


def ack_tag(properties: Any) -> str | None:
    """The delivery tag of a task's message (``task.request.properties``) when the task may drop its
    unacked record with its last writes (:func:`unacked_drop`): its message came through the fleet's
    Redis transport and this process acks it. Else None."""
    if _acking_pid != os.getpid() or not isinstance(properties, dict):
        return None
    tag = properties.get("delivery_tag")
    return tag if isinstance(tag, str) and tag else None


def unacked_drop(tag: str) -> list[list[str]]:
    """The commands that drop a message's unacked record (kombu's ack: ZREM and HDEL)."""
    return [["ZREM", _kombu.Channel.unacked_index_key, tag], ["HDEL", _kombu.Channel.unacked_key, tag]]


def dropped_with_writes(tag: str) -> None:
    """The unacked record of ``tag`` went with the task's last writes: its ack sends nothing. Call
    only once those writes are applied; the message must then be acked, never requeued."""
    _dropped[tag] = None
    if len(_dropped) > _DROPPED_MAX:
        _dropped.popitem(last=False)


@dataclass
class _Writes:
    """Commands to make ahead of the next message this context publishes."""

    #: Queues the commands on a pipeline (redis-py's).
    queue: Callable[[Any], None]
    #: The client of the fleet's state, for a channel that cannot take them in its own pipeline.
    client: Any
    #: The delivery tag of the message the task is handling (:func:`ack_tag`): its unacked record
    #: goes after the publish, in the same pipeline, where the channel merges them.
    ack_tag: str | None = None
    done: bool = False

    def apply(self) -> None:
        """The commands in a round trip of their own."""
        pipe = self.client.pipeline(transaction=False)
        self.queue(pipe)
        pipe.execute()
        self.done = True


_writes: ContextVar[_Writes | None] = ContextVar("fleet_writes_with_publish", default=None)


@contextmanager
def writes_with_publish(
    client: Any, queue: Callable[[Any], None], *, merge: bool = True, ack_tag: str | None = None
) -> Iterator[None]:
    """Make the commands ``queue`` puts on a pipeline before the message published in this block
    (one message): in the same round trip as its LPUSH where the fleet's channel sends it, else in
    one of their own just before it. ``client`` is the fleet's state client. ``merge`` False (the
    messages are not on that Redis: RabbitMQ): they are made on entering the block. A publish that
    kombu retries after a lost connection makes them again (they must be idempotent).

    ``ack_tag`` (:func:`ack_tag`, the message of the task that publishes): where the commands and the
    LPUSH go in one pipeline, the message's unacked record is dropped after the LPUSH in it too, and
    its ack then sends nothing (:func:`dropped_with_writes`). The task must then ack its message.

    Raises:
        RuntimeError: nothing was published through the fleet's Redis channel in the block.
    """
    pending = _Writes(queue, client, ack_tag)
    if not merge:
        pending.apply()
    token = _writes.set(pending)
    try:
        yield
    finally:
        _writes.reset(token)
    if not pending.done:
        raise RuntimeError("writes_with_publish: no message was published through the fleet's Redis channel")


def give_back(client: Any, inflight_key: str) -> int:
    """Put every message of an in-flight list back at the head of its queue (the end consumers
    take from, as kombu's own restore does); how many."""
    queue = keys.inflight_parts(inflight_key)[1]
    moved = 0
    while client.lmove(inflight_key, queue, "RIGHT", "RIGHT") is not None:
        moved += 1
    return moved


class QoS(_kombu.QoS):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        global _acking_pid
        channel, default = self.channel, _kombu.Channel
        if not channel.global_keyprefix and (channel.unacked_key, channel.unacked_index_key) == (
            default.unacked_key,
            default.unacked_index_key,
        ):  # the record's keys are kombu's defaults, which unacked_drop names
            _acking_pid = os.getpid()

    def append(self, message: Any, delivery_tag: str) -> None:
        fetched = self.channel._fetched
        if fetched is None:
            super().append(message, delivery_tag)
            return
        inflight_key, raw, recorded, left = fetched
        if recorded:  # the take script wrote the unacked record with the take
            _kombu.virtual.QoS.append(self, message, delivery_tag)
            if left:
                self._give_back_lost(inflight_key)
            return
        delivery = message.delivery_info
        record = _kombu.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        # kombu's unacked record and the in-flight copy's removal, in one step: one script and one
        # reply, where a MULTI of four commands parsed six (a tenth of a worker's consumer thread).
        left = self._script("unacked_add")(
            keys=[self.unacked_index_key, self.unacked_key, inflight_key],
            args=[delivery_tag, _kombu.time(), record, raw],
        )
        _kombu.virtual.QoS.append(self, message, delivery_tag)
        if left:
            self._give_back_lost(inflight_key)

    def _give_back_lost(self, inflight_key: str) -> None:
        # Nothing else can be in flight on this channel now: these replies were lost.
        _kombu.logger.warning(
            "reliable fetch: %d message(s) whose delivery to this worker was lost: back on %s",
            give_back(self.channel.client, inflight_key), keys.inflight_parts(inflight_key)[1],
        )  # fmt: skip

    def ack(self, delivery_tag: str) -> None:
        # kombu's ZREM and HDEL of the unacked record, as one script rather than a MULTI of two; none
        # where the task's last writes dropped it (dropped_with_writes).
        if _dropped.pop(delivery_tag, _KEPT) is _KEPT:
            self._script("unacked_drop")(keys=[self.unacked_index_key, self.unacked_key], args=[delivery_tag])
        else:
            # The round trip skipped was where the acking thread let another have the interpreter
            # lock: with the asyncio pool's consumer on a thread of its own, bench/concurrency.py lost
            # 10-15% of its rate without this yield (docs/performance.md). With the consumer on the
            # pool's loop, two alternated pairs without it: 144.4/160.7 jobs/s against 145.7/164.6.
            sleep(0)
        _kombu.virtual.QoS.ack(self, delivery_tag)

    def _script(self, name: str) -> Any:
        """Script ``name`` on the channel's client of synchronous commands (registered again for a new
        one); never ``channel.client``, whose connection may be waiting on a fetch."""
        client = self.channel._create_client()
        found = self._scripts.get(name)
        if found is None or found.registered_client is not client:
            found = self._scripts[name] = scripts.register(client, name)
        return found

    @property
    def _scripts(self) -> dict[str, Any]:
        mine: dict[str, Any] | None = self.__dict__.get("_fleet_scripts")
        if mine is None:
            mine = self.__dict__["_fleet_scripts"] = {}
        return mine


#: The take script (``priority_take.lua``) and its SHA1, the name the server caches it under.
_TAKE = scripts.source("priority_take")
_TAKE_SHA = hashlib.sha1(_TAKE.encode(), usedforsecurity=False).hexdigest()

#: The order a worker looks at a queue's lists in (kombu's ``priority_steps``): the most urgent first.
PRIORITY_STEPS = list(reversed(keys.PRIORITIES))
#: The most messages one take brings (within the worker's free prefetch): one round trip and one
#: wake of the consumer's thread for up to this many, where kombu takes one per BRPOP.
TAKE_MAX = 32
#: How long a command waits for a free connection of a channel's pool before it is a connection error.
_POOL_WAIT_S = 20.0


class Channel(_kombu.Channel):  # type: ignore[misc]
    QoS = QoS
    from_transport_options = (*_kombu.Channel.from_transport_options, "fleet_reliable_fetch")
    priority_steps = PRIORITY_STEPS
    _sync_client: Any = None
    _put_script: Any = None
    #: Take messages with BLMOVE into an in-flight list (set from the transport options).
    fleet_reliable_fetch = False
    #: The queue a fetch is outstanding for, and (in-flight key, raw message, whether the take script
    #: recorded it as unacked, the in-flight list's length then) while it is delivered.
    _fetching: str | None = None
    _fetched: tuple[str, bytes, bool, int] | None = None
    #: The command of the outstanding fetch: the take script (EVAL, EVALSHA) or the wait (BLMOVE).
    _fetch_command = "EVAL"
    #: The next fetch looks at every list (the take script), rather than waiting on the plain one.
    _take_next = True
    #: The server has the take script (EVALSHA serves).
    _take_loaded = False
    _indexed: frozenset[str] = frozenset()
    #: Queues consumed without acks.
    _fleet_noack: frozenset[str] = frozenset()

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """The synchronous commands' pool waits for a free connection rather than failing.

        kombu's raises MaxConnectionsError once ``max_connections`` (10) are in use. A threads pool
        acks on the consumer's thread, so it never gets there; a gevent pool acks from each job's
        greenlet, and at hundreds in flight the 11th concurrent ack failed, which the consumer took
        for a lost broker connection (bench/concurrency.py --pool gevent, docs/performance.md).
        """
        if asynchronous:
            return super()._get_pool(asynchronous=True)
        params = self._connparams(asynchronous=False)
        me: Any = self
        me.keyprefix_fanout = me.keyprefix_fanout.format(db=params["db"])
        return redis.BlockingConnectionPool(timeout=_POOL_WAIT_S, **params)  # type: ignore[no-untyped-call]

    def _create_client(self, asynchronous: bool = False) -> Any:
        try:
            if asynchronous:  # BRPOP and pub/sub hold their connection: one client each, as before
                return _kombu_create_client(self, asynchronous=True)
            pool = self.pool
            client = self._sync_client
            if client is None or client.connection_pool is not pool:
                client = self._sync_client = _kombu_create_client(self)
            return client
        except AttributeError as exc:
            # A channel whose connection closed (the broker went away) has no parameters to build a
            # pool from: kombu raised AttributeError, which Celery takes for an unrecoverable error
            # and exits on. It is a connection error: the consumer reconnects.
            raise redis.ConnectionError(f"the broker connection is closed ({exc})") from exc

    def priority(self, n: int) -> int:
        """A message's priority as a list of its queue knows it: 0 to 9 (kombu's own bisects its
        ascending steps)."""
        return keys.priority(n)

    def _q_for_pri(self, queue: str, pri: int) -> str:
        return keys.queue_list(queue, self.priority(pri))

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        priority = self._get_message_priority(message, reverse=False)
        # kombu's own put serves these (and any message of priority 0): a key prefix, a queue TTL, a batch.
        kombus = bool(self.global_keyprefix or (self._expires and queue in self._expires))
        kombus = kombus or kwargs.get("_publish_batch") is not None
        writes = _writes.get()
        if writes is not None and not writes.done:
            if kombus or priority:
                writes.apply()  # a round trip of their own, ahead of the message
            else:  # the commands, the LPUSH and the unacked record's drop in one pipeline, in that order
                tag = writes.ack_tag
                with self.conn_or_acquire() as client:
                    pipe = client.pipeline(transaction=False)
                    writes.queue(pipe)
                    pipe.lpush(self._q_for_pri(queue, 0), _kombu.dumps(message))
                    for command in unacked_drop(tag) if tag is not None else ():
                        pipe.execute_command(*command)
                    pipe.execute()
                writes.done = True
                if tag is not None:
                    dropped_with_writes(tag)
                return
        if kombus or not priority:
            super()._put(queue, message, **kwargs)
            return
        lists = [keys.queue_list(queue, priority), *keys.queue_lists(queue)]
        with self.conn_or_acquire() as client:
            script = self._put_script
            if script is None or script.registered_client is not client:
                script = self._put_script = scripts.register(client, "priority_put")
            script(keys=lists, args=[_kombu.dumps(message)])

    def _fetch_queue(self) -> str | None:
        """The one queue this channel consumes, when reliable fetch applies to it."""
        if not self.fleet_reliable_fetch or len(self.active_queues) != 1 or self.global_keyprefix:
            return None
        queue = str(next(iter(self.active_queues)))
        # A consumer without acks (Celery's pidbox replies) never records its messages as unacked.
        return None if queue in self._fleet_noack else queue

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("no_ack", args[0] if args else False):
            self._fleet_noack = self._fleet_noack | {queue}
        return super().basic_consume(queue, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        queue = self._fetch_queue()
        if queue is None:
            super()._brpop_start(timeout)
            return
        from fleet.recovery import worker_id  # deferred: recovery imports the middleware package

        inflight_key = keys.inflight(worker_id(), queue)
        if inflight_key not in self._indexed:
            self.client.sadd(keys.inflight_index(), inflight_key)
            self._indexed = self._indexed | {inflight_key}
        self._fetching = queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        if self._take_next:
            # EVALSHA once the server has the script (the first take, and the first after a NOSCRIPT
            # reply, sends it whole): a fetch does not carry the script's text each time.
            take_keys = [*keys.queue_lists(queue), inflight_key, self.unacked_index_key, self.unacked_key]
            self._fetch_command = "EVALSHA" if self._take_loaded else "EVAL"
            script = _TAKE_SHA if self._take_loaded else _TAKE
            self.client.connection.send_command(
                self._fetch_command, script, len(take_keys), *take_keys, _kombu.time(), self._take_count()
            )
            return
        self._fetch_command = "BLMOVE"
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command("BLMOVE", queue, inflight_key, "RIGHT", "LEFT", wait or 0)

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._fetching
        if queue is None:
            return bool(super()._brpop_read(**options))
        from fleet.recovery import worker_id

        command = self._fetch_command
        try:
            try:
                raw = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self._take_next = True
                self.client.connection.disconnect()
                raise
            except redis.exceptions.NoScriptError:
                self._take_loaded = False  # the server lost its scripts (a restart): send it whole
                raise _kombu.Empty() from None
            take = command != "BLMOVE"
            self._take_loaded = self._take_loaded or take
            # An empty queue: wait on its plain list next. After a wait, look at every list again.
            self._take_next = not (take and raw is None)
            if raw is None:
                raise _kombu.Empty()
            inflight_key = keys.inflight(worker_id(), queue)
            if not take:  # a wait's message, in the in-flight list: QoS.append records it
                taken: list[tuple[bytes, bool, int]] = [(raw, False, 0)]
            else:  # [left, message, recorded, ...]: what was left in the in-flight list goes with the last
                pairs = list(zip(raw[1::2], raw[2::2], strict=True))
                taken = [
                    (m, bool(r), int(raw[0]) if i == len(pairs) - 1 else 0) for i, (m, r) in enumerate(pairs)
                ]
            for i, (message, recorded, left) in enumerate(taken):
                self._fetched = (inflight_key, message, recorded, left)
                try:
                    self.connection._deliver(loads(_kombu.bytes_to_str(message)), queue)
                except BaseException:
                    self._give_back_undelivered([m for m, was_recorded, _ in taken[i + 1 :] if was_recorded])
                    raise
                finally:
                    self._fetched = None
            return True
        finally:
            self._fetching = None
            self._in_poll = None
            self._flush_brpop_reauth()

    def _take_count(self) -> int:
        """How many messages the next take may bring: the free prefetch, at most :data:`TAKE_MAX`."""
        free = self.qos.can_consume_max_estimate()
        return TAKE_MAX if free is None else max(1, min(int(free), TAKE_MAX))

    def _give_back_undelivered(self, messages: list[bytes]) -> None:
        """Put back the messages of a take that the worker recorded but never delivered (a delivery
        before them raised), at the head of their queue; else the reaper does, after
        ``recovery.orphan_after_s``."""
        for message in messages:
            try:
                tag = loads(_kombu.bytes_to_str(message))["properties"]["delivery_tag"]
                self.qos.restore_by_tag(tag)
            except Exception:
                _kombu.logger.warning(
                    "reliable fetch: could not give back an undelivered message", exc_info=True
                )


class Transport(_kombu.Transport):  # type: ignore[misc]
    Channel = Channel
