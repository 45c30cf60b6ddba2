"""Faults cost seconds: a worker's heartbeat, and a reaper that gives a dead worker's jobs back.

On Redis, a message a worker took stays in kombu's ``unacked`` hash until it is acked; if the worker
dies (SIGKILL, OOM, a lost host), Redis gives it back only after the visibility timeout (minutes, as
it must outlast the longest job). Here every worker's main process writes a heartbeat every
``recovery.heartbeat_s``: its identity, the delivery tags and deliveries of every message it holds
(reserved, waiting for a countdown, or running), under a key that lapses after
``recovery.worker_ttl_s``. Every worker also runs the reaper: an unacked message older than
``recovery.orphan_after_s`` that no live worker says it holds belongs to a dead one, and goes back
on its queue at once (as kombu's restore does, marked redelivered, but under a new delivery tag);
so do messages lost on their way to a worker (reliable fetch, :mod:`fleet.transport`). Its job's
lock names the dead worker, whose heartbeat is gone, so the job's next delivery takes the lock over
at once (:class:`fleet.middleware.lock.JobLock`). All of it works across machines: nothing reads
/proc.

A reaper that was itself cut off from the broker waits ``orphan_after_s`` after it reconnects before
it reaps, so every live worker has heartbeated again first (after a broker restart every heartbeat
has lapsed). RabbitMQ needs none of this: it redelivers as soon as a consumer's channel closes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from fleet import keys
from fleet.errors import BrokerError
from fleet.keys import QUEUES
from fleet.middleware.base import Middleware

if TYPE_CHECKING:
    from fleet.runtime import Runtime

__all__ = [
    "Beat",
    "Heartbeat",
    "Liveness",
    "Reaper",
    "Recovery",
    "delivery",
    "held_by_this_worker",
    "restore_orphan",
    "worker_id",
]

log = logging.getLogger(__name__)

_WORKER_ID: str | None = None
#: kombu's Redis transport's keys of unacked messages (its defaults, which the fleet keeps).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def worker_id() -> str:
    """This worker's identity: ``host:pid:nonce`` of its main process (a pool's children inherit it,
    so a lock taken in a child names the worker whose heartbeat vouches for it)."""
    global _WORKER_ID
    if _WORKER_ID is None:
        _WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    return _WORKER_ID


@dataclass
class Beat:
    """One heartbeat: who, when (the worker's clock, for people), the delivery tags and the deliveries
    (:func:`delivery`) of the messages it holds."""

    worker: str
    at: float
    tags: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps({"worker": self.worker, "at": self.at, "tags": self.tags, "jobs": self.jobs})

    @classmethod
    def loads(cls, raw: Any) -> Beat | None:
        try:
            data = json.loads(raw)
            return cls(str(data["worker"]), float(data["at"]), list(data["tags"]), list(data["jobs"]))
        except (ValueError, KeyError, TypeError):
            return None


def delivery(task_id: str, retries: int) -> str:
    """One delivery of a job as heartbeats list it and locks name it: a requeued copy (Celery's
    retry) is another delivery; a message the broker hands out again is the same one."""
    return f"{task_id}@{retries}"


def held_by_this_worker() -> tuple[list[str], list[str]]:
    """The delivery tags and the deliveries (:func:`delivery`) of every message this worker holds
    (reserved, waiting for its countdown, or running), from Celery's worker state, read in the main
    process. A message is in that state before any pool process starts its job (and takes its lock),
    until it is acked or rejected. The sets hold request objects: two copies of one job are two."""
    from celery.worker import state  # deferred: only a worker reads this

    requests: list[Any] = []
    for _ in range(5):  # the consumer thread may change the sets while they are copied
        try:
            requests = [
                *state.reserved_requests, *state.active_requests, *getattr(state, "scheduled_requests", ()),
            ]  # fmt: skip
            break
        except RuntimeError:
            continue
    tags, jobs = set(), set()
    for request in requests:
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is not None:
            tags.add(str(tag))
        retries = (getattr(request, "request_dict", None) or {}).get("retries") or 0
        jobs.add(delivery(str(request.id), int(retries)))
    return sorted(tags), sorted(jobs)


#: How much later than a lock a heartbeat must have been written to prove the lock stale (the
#: heartbeat's snapshot is taken just before it is written).
BEAT_MARGIN_S = 0.5


class Liveness:
    """Whether a lock's holder still runs its job, judged by the holder's heartbeat."""

    def __init__(self, client: Any, worker_ttl_s: float) -> None:
        self.client = client
        self.worker_ttl_s = worker_ttl_s

    def holds(self, holder: str, task_id: str, lock_age_s: float) -> bool:
        """False when the holder's heartbeat lapsed (the worker is gone), or when a heartbeat it wrote
        after taking the lock no longer lists the delivery the lock names (``worker#retries``): its
        pool process died, or its release failed while the broker was away (a requeued copy of the
        job it may hold since is another delivery). Ages are the broker's: from the keys' TTLs."""
        worker, _, retries = holder.partition("#")
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.worker(worker))
        pipe.pttl(keys.worker(worker))
        raw, pttl = pipe.execute()
        beat = Beat.loads(raw) if raw is not None else None
        if beat is None:
            return False
        if delivery(task_id, int(retries or 0)) in beat.jobs:
            return True
        beat_age_s = self.worker_ttl_s - max(0, int(pttl)) / 1000.0
        return beat_age_s + BEAT_MARGIN_S >= lock_age_s


class Reaper:
    """Puts back on their queues the unacked messages no live worker holds."""

    def __init__(self, client: Any, restore: Callable[[str], None], orphan_after_s: float) -> None:
        self.client = client
        self.restore = restore
        self.orphan_after_s = orphan_after_s

    def live_beats(self) -> list[Beat]:
        """Every live worker's last heartbeat (the lapsed ones leave the set)."""
        ids = [_text(i) for i in self.client.smembers(keys.workers())]
        if not ids:
            return []
        raws = self.client.mget([keys.worker(i) for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            self.client.srem(keys.workers(), *gone)
        return [b for b in (Beat.loads(r) for r in raws if r is not None) if b is not None]

    def reap(self) -> int:
        """Restore every orphaned message (unacked, or lost on its way to a worker); how many."""
        return self.reap_unacked() + self.reap_inflight()

    def reap_unacked(self) -> int:
        seconds, _ = self.client.time()
        old = self.client.zrangebyscore(UNACKED_INDEX, "-inf", float(seconds) - self.orphan_after_s)
        if not old:
            return 0
        held = {tag for beat in self.live_beats() for tag in beat.tags}
        orphans = [t for t in (_text(o) for o in old) if t not in held]
        for tag in orphans:
            self.restore(tag)
        if orphans:
            log.warning("gave %d message(s) of dead workers back to their queues", len(orphans))
        return len(orphans)

    def reap_inflight(self) -> int:
        """Give back the in-flight lists (reliable fetch) idle for ``orphan_after_s``: a worker drops
        each message from its list within milliseconds, so what stays was lost on its way (the worker
        died or was cut off). The empty lists of workers gone for good leave the index."""
        from fleet.transport import give_back  # deferred: the transport imports kombu's Redis

        moved = 0
        for key in (_text(k) for k in self.client.smembers(keys.inflight_index())):
            worker, _ = keys.inflight_parts(key)
            try:
                idle = self.client.object("idletime", key)
            except redis.ResponseError:  # OBJECT IDLETIME is refused under an LFU eviction policy
                idle = None if self.client.exists(keys.worker(worker)) else self.orphan_after_s
            if idle is None:
                if not self.client.exists(keys.worker(worker)):
                    self.client.srem(keys.inflight_index(), key)
                continue
            if float(idle) >= self.orphan_after_s:
                moved += give_back(self.client, key)
        if moved:
            log.warning("gave %d message(s) lost on their way to a worker back to their queues", moved)
        return moved


class Heartbeat:
    """The heartbeat (and reaper) thread of one worker's main process."""

    def __init__(
        self,
        client: Any,
        *,
        heartbeat_s: float,
        worker_ttl_s: float,
        held: Callable[[], tuple[list[str], list[str]]] = held_by_this_worker,
        reaper: Reaper | None = None,
    ) -> None:
        self.client = client
        self.heartbeat_s = heartbeat_s
        self.worker_ttl_s = worker_ttl_s
        self.held = held
        self.reaper = reaper
        self.worker = worker_id()
        #: When the broker last came back (or the thread started): reaping waits a while after it.
        self.healthy_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.heartbeat_s * 2)
        try:
            self.client.delete(keys.worker(self.worker))
            self.client.srem(keys.workers(), self.worker)
        except BrokerError:
            pass  # its key lapses by itself

    def beat(self) -> None:
        """Write this worker's heartbeat (one round trip)."""
        tags, jobs = self.held()
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.worker(self.worker), Beat(self.worker, time.time(), tags, jobs).dumps(),
                 px=int(self.worker_ttl_s * 1000))  # fmt: skip
        pipe.sadd(keys.workers(), self.worker)
        pipe.execute()

    def step(self, now: float) -> None:
        """One beat, then a reap when this worker has been connected long enough."""
        try:
            self.beat()
        except BrokerError as exc:
            if self.healthy_since is not None:
                log.warning("heartbeat: the broker is away (%s)", exc)
            self.healthy_since = None
            return
        if self.healthy_since is None:
            self.healthy_since = now
            return
        if self.reaper is not None and now - self.healthy_since >= self.reaper.orphan_after_s:
            try:
                self.reaper.reap()
            except BrokerError as exc:
                log.warning("reaper: the broker is away (%s)", exc)

    def _run(self) -> None:
        self.step(time.monotonic())
        while not self._stop.wait(self.heartbeat_s):
            self.step(time.monotonic())


def restore_orphan(client: Any) -> Callable[[str], None]:
    """Put an unacked message back at the head of its queue by its delivery tag, as kombu's restore
    does (marked redelivered), but under a new delivery tag: a late ack of the old tag (from a worker
    that was cut off, its commands delivered when its link came back) cannot then delete the record
    of the worker that holds the message now. Messages of queues that are not the fleet's are left to
    kombu's own restore (after the visibility timeout)."""

    def restore(tag: str) -> None:
        with client.pipeline(transaction=True) as pipe:
            for _ in range(10):
                try:
                    pipe.watch(UNACKED)
                    raw = pipe.hget(UNACKED, tag)
                    entry = json.loads(raw) if raw is not None else None
                    if not (isinstance(entry, list) and len(entry) == 3 and entry[2] in QUEUES):
                        pipe.unwatch()
                        return
                    message, queue = entry[0], entry[2]
                    properties = message.setdefault("properties", {})
                    properties["delivery_tag"] = str(uuid.uuid4())
                    properties.setdefault("delivery_info", {})["redelivered"] = True
                    if isinstance(message.get("headers"), dict):
                        message["headers"]["redelivered"] = True
                    pipe.multi()
                    pipe.zrem(UNACKED_INDEX, tag)
                    pipe.hdel(UNACKED, tag)
                    # At the head of its priority's list (a worker waiting on an idle queue sees a
                    # list other than the plain one at its next poll, within a second).
                    back = keys.queue_list(queue, keys.priority(properties.get("priority")))
                    pipe.rpush(back, json.dumps(message))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    return restore


class Recovery(Middleware):
    """Runs the heartbeat and the reaper in a worker's main process, from its boot to its shutdown."""

    def __init__(self, start: Callable[[], Heartbeat]) -> None:
        self._start = start
        self._heartbeat: Heartbeat | None = None

    def after_worker_boot(self, runtime: Runtime) -> None:
        self._heartbeat = self._start().start()

    def before_worker_shutdown(self, runtime: Runtime) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
