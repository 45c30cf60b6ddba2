"""A network partition between worker hosts and the broker: more than one machine, on one machine.

Each worker "host" is a Linux network namespace (tests/integration/netns.py) joined by a veth pair to
a bridge in the root namespace, where the broker and the mock provider listen on the bridge's
address. Hosts "a" and "b" each run real worker processes (``celery -A fleet.worker worker``): one
for the router queue, one for mini. While jobs flow, host "a"'s link is taken down (its veth, a
pulled cable: no RST, no FIN) for ``cut_s`` seconds, then brought back.

What the fleet should do (fleet/recovery.py, fleet/middleware/lock.py, fleet/lua/job_finish.lua): a's
heartbeat lapses (``recovery.worker_ttl_s``), the reaper of a live worker gives a's unacked messages
(and a's in-flight lists, with reliable fetch) back to their queues, their jobs' locks are taken
over, and they finish on b (or on any other live worker) *before a's link is back*. When a returns,
its superseded runs write nothing.

**Contract of** :func:`partition` ``(rig, n, *, cut_s=20.0, victim_dies_after_s=None) -> None`` (for
bench/chaos.py):

- Needs root and ``ip netns`` (:func:`tests.integration.netns.permitted`). Where namespaces are not
  permitted it runs nothing, logs why, and records ``rig.results["partition"] = {"skipped": why}``.
- Reads ``rig.tmp``, ``rig.broker`` (a running :class:`fleet.embedded.EmbeddedBroker`; for the run
  it is also bound to the bridge address with ``CONFIG SET bind`` and ``protected-mode no``, both
  put back afterwards), ``rig.mock`` (the ASGI app of the watched mock provider, with
  ``configure(**patch)``; served for the run on the bridge address as well, so its overlap counts
  include the hosts' calls; its latency is set to 300 ms), ``rig.client`` (submits ``n`` jobs,
  prompts tagged ``[partition]``, half pinned to mini, half through the router with a low-complexity
  hint), ``rig.log``. For the run it also reads the broker's MONITOR stream (kept in
  ``rig.tmp/partition/monitor.log``, beside the hosts' worker logs): that is how it knows which host
  took, gave back and finished each job.
- ``victim_dies_after_s``: host a's processes are SIGKILLed that long into the cut (a host that
  crashed while cut off: what the broker handed it is never read). Default: a lives, and returns.
- Writes ``rig.final_at`` (when each job was seen final) and, through ``rig.record("partition", ids,
  done, started, fault_at=<the cut>)``, ``rig.results["partition"]`` (its ``recovery_s``: from the cut
  to the last of the scenario's jobs final); then adds to it: ``affected`` (jobs whose message host
  a held at the cut, took after it, or had in its in-flight lists during it), ``finished_elsewhere``
  (of those, finished by another host before a's link came back), ``late`` (affected jobs final
  only after a was back), ``written_by_victim`` (affected jobs whose result a wrote after the cut:
  must be 0), ``affected_recovery_s`` (from the cut to the last affected job final),
  ``lost_evidence`` (per job never final: its ``fleet:job`` record, where its message is now,
  whether it ever reached ``unacked``, its history at the broker), ``escalations``,
  ``superseded_writes`` (last writes job_finish.lua refused, per host), ``writers`` (results written
  per host: ``a``, ``b``, ``root``), ``inflight_seen``, ``cut_s``.
- The rig's own fleet (the Supervisor's workers, in the root namespace) keeps consuming too: it is a
  third host that is never cut. The rig's result-write counter and watched mock see every write and
  call of the hosts, so chaos.py's ``results_written_twice`` and ``concurrent_live_runs`` cover them.
- Takes about ``cut_s`` + 25 s. Leaves no namespace, veth, bridge or process behind, even on error
  (a run SIGKILLed before its cleanup is swept by the next one: tests/integration/netns.py).

tests/integration/test_multihost.py runs the same scenario (:func:`run_partition`) on a broker and a
mock provider of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet import keys, scripts
from fleet.procs import Child, pid_alive
from fleet.providers.mock_server import MockConfig, create_app
from fleet.worker import worker_argv
from tests.integration.netns import Network, network, permitted

__all__ = [
    "CallWatch",
    "MonitorLog",
    "Outcome",
    "ResultWrites",
    "SiteServer",
    "partition",
    "run_partition",
    "start_hosts",
    "stop_hosts",
]

#: The host whose link is cut, and the one that stays.
VICTIM, SURVIVOR = "a", "b"
#: queue -> threads of its worker process, on every host.
HOST_QUEUES = {"router": 2, "mini": 8}
#: What every host's workers run with (on top of the broker and mock addresses).
HOST_ENV = {
    "FLEET_PROFILE": "demo",
    "FLEET_MOCK__ENABLED": "true",
    "FLEET_QUALITY__ENABLED": "false",  # exact tiers: an upgraded job would wait for a tier not running
    "FLEET_MOCK__SIMULATE_QUALITY": "false",
    "PYTHONUNBUFFERED": "1",
}
_ID = re.compile(rb"[0-9a-f]{32}")
_MONITOR_LINE = re.compile(rb"^(\d+\.\d+) \[\d+ ([^\]]+)\] (.*)$", re.S)
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


# --- servers the hosts reach, on the bridge address -------------------------------------------------


class SiteServer:
    """An ASGI app served by uvicorn on a thread, on ``host`` (a port of its own)."""

    def __init__(self, app: ASGIApp, host: str, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", lifespan="off", access_log=False,
            log_config=None, timeout_keep_alive=75, backlog=4096,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._main, name=f"site-{host}:{self.port}", daemon=True)

    def _main(self) -> None:
        asyncio.run(self.server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 10.0) -> SiteServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()


class CallWatch:
    """The mock provider (in this process), recording the model calls of one job that overlap in time
    and which process made each (``x-fleet-caller``): ``concurrent`` when another process's earlier
    call was still running and that process was alive (two live workers on one job), ``after_death``
    when it was dead, ``after_timeout`` when the same process called again (it gave up on its first
    call at its read timeout, and the provider was still running it).
    The same rule as bench/chaos.py's WatchedMock, on an address of the caller's choosing."""

    def __init__(self, config: MockConfig | None = None) -> None:
        self.inner = create_app(config or MockConfig())
        self.in_flight: dict[str, list[int]] = {}
        self.concurrent: set[str] = set()
        self.after_death: set[str] = set()
        self.after_timeout: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.callers: dict[str, set[int]] = defaultdict(set)
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.inner(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        key, caller = prompt_of(body), caller_of(scope)
        with self._lock:
            self.calls[key] += 1
            self.callers[key].add(caller)
            earlier = self.in_flight.setdefault(key, [])
            if caller in earlier:
                # The same process calls again while the provider still runs its first call: it gave
                # up on that one (its read timeout) and retried; not a second run of the job.
                self.after_timeout.add(key)
            elif earlier:
                (self.concurrent if any(pid_alive(p) for p in earlier) else self.after_death).add(key)
            earlier.append(caller)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.inner(scope, replay, send)
        finally:
            with self._lock:
                self.in_flight[key].remove(caller)


def caller_of(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"x-fleet-caller" and value.isdigit():
            return int(value)
    return 0


def prompt_of(body: bytes) -> str:
    try:
        data = json.loads(body)
        users = [m.get("content") for m in data.get("messages", []) if m.get("role") == "user"]
        return str(users[-1]) if users else ""
    except (ValueError, AttributeError, TypeError):
        return ""


# --- what the broker saw ------------------------------------------------------------------------------


class _Watcher:
    """A daemon thread that watches the broker from :meth:`start` (once it is ``ready``) to :meth:`stop`."""

    name = "watcher"

    def __init__(self) -> None:
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class ResultWrites(_Watcher):
    """Counts final (SUCCESS) result writes per task id from their PUBLISH on ``celery-task-meta-*``."""

    name = "result-writes"

    def __init__(self, url: str) -> None:
        self.url = url
        self.writes: Counter[str] = Counter()
        super().__init__()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client: Any = redis.Redis.from_url(self.url, socket_timeout=2)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe("celery-task-meta-*")
                self.ready.set()
                try:
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if message and message["type"] == "pmessage":
                            meta = json.loads(message["data"])
                            if meta.get("status") == "SUCCESS":
                                self.writes[str(meta.get("task_id"))] += 1
                finally:
                    pubsub.close()
                    client.close()
            except (redis.RedisError, OSError):
                time.sleep(0.05)

    def twice(self, ids: list[str] | None = None) -> list[str]:
        """Task ids (of ``ids``, else all) whose final result was written more than once."""
        return sorted(t for t, n in self.writes.items() if n > 1 and (ids is None or t in ids))


@dataclass(frozen=True)
class Event:
    """One command the broker ran: when (its clock), from where (``ip``, or ``lua`` inside a script,
    with ``caller`` the script's caller), the command and its first key. ``call`` numbers the
    commands clients sent: a script's commands share their EVALSHA's number."""

    at: float
    ip: str
    caller: str
    command: str
    key: str
    call: int
    #: The sha1 of the script an EVALSHA (or EVAL) ran; empty for other commands.
    script: str = ""
    #: The delivery tag an unacked-message command (HSET, HGET, HDEL, ZREM) was about.
    tag: str = ""


class MonitorLog(_Watcher):
    """The broker's MONITOR stream for the run, kept as raw lines (also written to ``path``), so the
    history of any job can be read back afterwards: which host took its message (HSET unacked), put it
    back, finished it (job_finish.lua's SET of the result)."""

    name = "broker-monitor"

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self.lines: list[bytes] = []
        self._conn: Any = None
        super().__init__()

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        conn: Any = client.connection_pool.get_connection()
        self._conn = conn
        try:
            conn.send_command("MONITOR")
            conn.read_response()  # OK
            self.ready.set()
            with self.path.open("wb") as out:
                while not self._stop.is_set():
                    with contextlib.suppress(redis.TimeoutError):
                        if conn.can_read(timeout=0.2):
                            line = conn.read_response(disable_decoding=True)
                            if isinstance(line, bytes):
                                self.lines.append(line)
                                out.write(line + b"\n")
        except (redis.RedisError, OSError):
            pass  # the run is over (or the broker went away): what was seen is kept
        finally:
            conn.disconnect()
            client.close()

    def history(self, ids: set[str]) -> dict[str, list[Event]]:
        """Per job of ``ids``: every command that named it (its id in a key or an argument)."""
        out: dict[str, list[Event]] = defaultdict(list)
        tags: dict[bytes, str] = {}
        caller, call = "", 0
        for raw in self.lines:
            match = _MONITOR_LINE.match(raw)
            if not match:
                continue
            at, who, rest = float(match.group(1)), match.group(2).decode(), match.group(3)
            ip = "lua" if who == "lua" else who.rsplit(":", 1)[0]
            if ip != "lua":
                caller, call = ip, call + 1
            args = _ARG.findall(rest)
            if not args:
                continue
            command = args[0].decode().upper()
            if command == "MGET":
                continue  # the observers' polling of results: nothing a worker did
            # A script's first key follows its sha (or body) and its number of keys.
            first = 3 if command in ("EVAL", "EVALSHA") else 1
            key = args[first].decode(errors="replace") if len(args) > first else ""
            script = ""
            if command == "EVALSHA" and len(args) > 1:
                script = args[1].decode()
            elif command == "EVAL" and len(args) > 1:
                script = hashlib.sha1(_unescape(args[1])).hexdigest()
            named = {i.decode() for i in _ID.findall(rest)} & ids
            about: dict[str, str] = {}  # job -> delivery tag
            if command == "HSET" and key == "unacked" and len(args) > 2 and named:
                tags[args[2]] = next(iter(named))
                about = {job: args[2].decode() for job in named}
            elif command in ("HDEL", "HGET", "ZREM") and key.startswith("unacked") and len(args) > 2:
                about = {tags[a]: a.decode() for a in args[2:] if a in tags}
                named |= set(about)
            for job in named:
                out[job].append(Event(at, ip, caller, command, key, call, script, about.get(job, "")))
        return out


def held(events: list[Event], ip: str, at: float) -> bool:
    """Whether the worker at ``ip`` held the job's message at ``at`` (recorded it as unacked before,
    and nobody acked or restored it by then), or took it at ``at`` or later."""
    for taken in (e for e in events if e.ip == ip and e.command == "HSET" and e.key == "unacked"):
        if taken.at >= at:
            return True
        released = any(
            e.tag == taken.tag and e.command in ("HDEL", "ZREM") and taken.at <= e.at < at for e in events
        )
        if not released:
            return True
    return False


def _unescape(quoted: bytes) -> bytes:
    """A MONITOR argument's bytes (it escapes quotes, backslashes and non-printable bytes)."""
    return re.sub(rb"\\(x[0-9a-fA-F]{2}|.)", _one_escape, quoted, flags=re.S)


def _one_escape(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if code[:1] == b"x" and len(code) == 3:
        return bytes([int(code[1:], 16)])
    return {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}.get(code, code)


#: The sha1 of fleet/lua/job_finish.lua as the fleet loads it: a job's guarded last writes.
JOB_FINISH_SHA = hashlib.sha1(scripts.source("job_finish").encode()).hexdigest()


def finishes(job: str, events: list[Event]) -> list[tuple[str, bool, float]]:
    """The guarded last writes (job_finish.lua) of ``job`` in its history: (the caller's address,
    whether it wrote the result, when) for each. One that SETs no result found another run owning the job
    (or its result written): it was superseded and wrote nothing."""
    out = []
    for event in events:
        if event.ip == "lua" or event.script != JOB_FINISH_SHA:
            continue
        inner = [e for e in events if e.call == event.call and e.ip == "lua"]
        if inner:  # none: NOSCRIPT (the script was not loaded yet; redis-py loads it and sends it again)
            wrote = any(e.command == "SET" and e.key == keys.result(job) for e in inner)
            out.append((event.ip, wrote, inner[0].at))
    return out


# --- hosts ---------------------------------------------------------------------------------------------


def host_env(
    broker_url: str, mock_url: str, state_dir: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """A host's worker environment: this process's, minus its FLEET_* settings, plus the broker and
    mock addresses (the bridge's) and :data:`HOST_ENV`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(HOST_ENV)
    env.update(FLEET_REDIS_URL=broker_url, FLEET_MOCK__URL=mock_url, FLEET_STATE_DIR=str(state_dir))
    env.update(extra or {})
    return env


def start_hosts(
    net: Network,
    broker_url: str,
    mock_url: str,
    log_dir: Path,
    *,
    queues: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, list[Child]]:
    """On every host of ``net``, one worker process per queue (``celery -A fleet.worker worker``,
    threads pool, named ``<queue>-<host>@<hostname>``); waits until each logs ``ready.``.

    Raises:
        RuntimeError: a worker exited or was not ready within ``timeout``.
    """
    started: dict[str, list[Child]] = {}
    for host in net.hosts:
        state = log_dir / f"state-{host}"
        for queue, threads in (queues or HOST_QUEUES).items():
            argv = [
                sys.executable, "-m", "celery", "-A", "fleet.worker",
                *worker_argv(queue, concurrency=threads, pool="threads",
                             hostname=f"{queue}-{host}@{socket.gethostname()}"),
            ]  # fmt: skip
            child = net.spawn(
                host, f"{queue}-{host}", argv, env=host_env(broker_url, mock_url, state, env),
                log_file=log_dir / f"{host}-{queue}.log",
            )  # fmt: skip
            started.setdefault(host, []).append(child)
    deadline = time.monotonic() + timeout
    for child in (c for children in started.values() for c in children):
        while "ready." not in child.log_tail(400):
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker {child.name} did not start: {child.log_tail()}")
            time.sleep(0.1)
    return started


def stop_hosts(hosts: dict[str, list[Child]], grace: float = 5.0) -> None:
    children = [c for cs in hosts.values() for c in cs]
    for child in children:
        child.signal(15)
    for child in children:
        child.wait(grace)
        child.stop(0.5)


def worker_ids(client: redis.Redis, pids: list[int], timeout: float = 10.0) -> list[str]:
    """The fleet worker identities (``host:pid:nonce``, from their heartbeats) of processes ``pids``."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in client.smembers(keys.workers())]
        found = [m for m in members if m.split(":")[1:2] and m.split(":")[1] in {str(p) for p in pids}]
        if len(found) >= len(pids):
            return sorted(found)
        time.sleep(0.2)
    raise RuntimeError(f"no heartbeat from every one of pids {pids} within {timeout} s (found {found})")


# --- the scenario ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one partition run measured (``*_at`` times are ``time.monotonic()`` seconds, ``*_wall``
    and ``written_at`` wall-clock ones)."""

    ids: list[str]
    #: task id -> final status, for the jobs that got one.
    done: dict[str, str]
    #: task id -> when it was first seen final.
    final_at: dict[str, float]
    started: float
    cut_at: float
    restored_at: float
    #: The same two moments by the wall clock (the broker's MONITOR times are wall-clock times).
    cut_wall: float
    restored_wall: float
    #: Jobs whose message the victim held at the cut (recorded as unacked from its address and not
    #: acked by then), took after it, or had in its in-flight lists during it.
    affected: list[str]
    #: Per lost job: what the broker knows of it.
    lost_evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Final writes job_finish.lua refused (another run owned the job), by the caller's address.
    superseded: dict[str, int] = field(default_factory=dict)
    #: Escalation records of these jobs.
    escalations: int = 0
    #: The victim's messages seen in its in-flight lists during the cut (reliable fetch).
    inflight_seen: list[str] = field(default_factory=list)
    #: task id -> the host (or address) whose last writes wrote its final result.
    writer: dict[str, str] = field(default_factory=dict)
    #: task id -> when its final result was written (wall clock, from the broker's MONITOR).
    written_at: dict[str, float] = field(default_factory=dict)

    def final_wall(self, task_id: str) -> float | None:
        """When the job's final result was written (wall clock): by the broker's record when it has
        one, else when it was first seen final."""
        if task_id in self.written_at:
            return self.written_at[task_id]
        if task_id in self.final_at:
            return self.final_at[task_id] - self.cut_at + self.cut_wall
        return None

    @property
    def lost(self) -> list[str]:
        return [i for i in self.ids if i not in self.done]

    @property
    def finished_elsewhere(self) -> list[str]:
        """Affected jobs another host finished before the victim's link came back."""
        return [
            i
            for i in self.affected
            if (self.final_wall(i) or float("inf")) < self.restored_wall and self.writer.get(i) != VICTIM
        ]

    @property
    def written_by_victim(self) -> list[str]:
        """Affected jobs whose final result the victim wrote after the cut (so after it came back;
        a result it wrote just before the cut, whose ack the cut lost, does not count)."""
        return [
            i for i in self.affected if self.writer.get(i) == VICTIM and self.written_at[i] >= self.cut_wall
        ]

    @property
    def late(self) -> list[str]:
        return [i for i in self.affected if (self.final_wall(i) or 0.0) >= self.restored_wall]

    @property
    def recovery_s(self) -> float | None:
        """From the cut to the last affected job final (None: an affected job never was)."""
        finals = [self.final_wall(i) for i in self.affected]
        if any(f is None for f in finals):
            return None
        last = max((f for f in finals if f is not None), default=self.cut_wall)
        return round(max(0.0, last - self.cut_wall), 1)

    def summary(self) -> dict[str, Any]:
        statuses = Counter(self.done.values())
        return {
            "submitted": len(self.ids),
            "completed": statuses.get("completed", 0),
            "escalated": statuses.get("escalated", 0),
            "lost": len(self.lost),
            "affected": len(self.affected),
            "finished_elsewhere": len(self.finished_elsewhere),
            "late": len(self.late),
            "written_by_victim": len(self.written_by_victim),
            "writers": dict(Counter(self.writer.values())),
            "affected_recovery_s": self.recovery_s,
            "cut_s": round(self.restored_at - self.cut_at, 1),
            "superseded_writes": self.superseded,
            "escalations": self.escalations,
            "inflight_seen": len(self.inflight_seen),
            "lost_evidence": self.lost_evidence,
        }


def job_request(i: int, tag: str = "partition") -> dict[str, Any]:
    """Job ``i``: even ones pinned to mini, odd ones through the router (a low-complexity hint keeps
    them on mini)."""
    request: dict[str, Any] = {"prompt": f"[{tag}] Rename variable v{i} to value_{i}", "kind": f"chaos.{tag}"}
    if i % 2 == 0:
        request["tier"] = "mini"
    else:
        request["hints"] = {"complexity": "low"}
    return request


class _Finals:
    """Polls the results of ``ids`` on a thread, noting when each was first seen final."""

    def __init__(self, client: Any, ids: list[str]) -> None:
        self.client = client
        self.ids = ids
        self.done: dict[str, str] = {}
        self.final_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finals", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                pending = [i for i in self.ids if i not in self.done]
            if not pending:
                continue
            try:
                found = self.client.peek(pending)
            except Exception:  # the broker's boundary errors: ask again next time
                continue
            now = time.monotonic()
            with self._lock:
                for task_id, result in found.items():
                    self.done.setdefault(task_id, result.status)
                    self.final_at.setdefault(task_id, now)

    def add(self, task_id: str) -> None:
        with self._lock:
            self.ids.append(task_id)

    def all_final(self) -> bool:
        with self._lock:
            return len(self.done) == len(self.ids)

    def __enter__(self) -> _Finals:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _untouching(admin: redis.Redis) -> Any:
    """A client of the same broker whose reads leave keys' idle times alone (CLIENT NO-TOUCH): the
    reaper gives an in-flight list back by its OBJECT IDLETIME, which any other read resets."""
    kw = admin.connection_pool.connection_kwargs
    watch: Any = redis.Redis(
        host=kw["host"], port=kw["port"], db=kw.get("db", 0), username=kw.get("username"),
        password=kw.get("password"), single_connection_client=True,
    )  # fmt: skip
    watch.execute_command("CLIENT", "NO-TOUCH", "ON")
    return watch


def _inflight(watch: Any, workers: list[str], ids: set[str]) -> set[str]:
    """Jobs (of ``ids``) in the in-flight lists of ``workers`` now (``watch``: see :func:`_untouching`;
    no pipeline, which would take another connection)."""
    found: set[str] = set()
    for worker in workers:
        for queue in HOST_QUEUES:
            for raw in watch.lrange(keys.inflight(worker, queue), 0, -1):
                found |= {i.decode() for i in _ID.findall(raw)} & ids
    return found


def evidence(client: Any, history: list[Event], task_id: str, names: dict[str, str]) -> dict[str, Any]:
    """What the broker knows of a job that never got a final state."""
    record = {k.decode(): v.decode() for k, v in client.hgetall(keys.job(task_id)).items()}
    where = []
    for queue in ("router", "mini"):
        if any(task_id.encode() in raw for raw in client.lrange(queue, 0, -1)):
            where.append(f"queue {queue}")
    if any(task_id.encode() in raw for raw in client.hvals("unacked")):
        where.append("unacked")
    for key in client.smembers(keys.inflight_index()):
        if any(task_id.encode() in raw for raw in client.lrange(key, 0, -1)):
            where.append(key.decode())
    return {
        "job_record": record,
        "now_in": where,
        "lock": (client.get(keys.running(task_id)) or b"").decode() or None,
        "ever_unacked": any(e.command == "HSET" and e.key == "unacked" for e in history),
        "history": [f"{e.at:.3f} {names.get(e.caller, e.caller)}{' (lua)' if e.ip == 'lua' else ''} "
                    f"{e.command} {e.key[:60]}" for e in history],
    }  # fmt: skip


def run_partition(
    net: Network,
    client: Any,
    admin: redis.Redis,
    victim_pids: list[int],
    *,
    jobs: int,
    monitor: MonitorLog,
    cut_after_s: float = 3.0,
    cut_s: float = 20.0,
    submit_s: float = 8.0,
    settle_s: float = 5.0,
    timeout_s: float = 40.0,
    victim_dies_after_s: float | None = None,
    tag: str = "partition",
    log: Callable[[str], None] = lambda _m: None,
) -> Outcome:
    """Submit ``jobs`` jobs over ``submit_s`` seconds through ``client`` (a :class:`fleet.producer.
    Client`); ``cut_after_s`` into it, cut the victim host (:data:`VICTIM`, whose worker processes are
    ``victim_pids``) for ``cut_s`` seconds; wait until every job is final (at most ``timeout_s`` after
    the restore), then ``settle_s`` more for late writes. With ``victim_dies_after_s``, every process
    of the victim is SIGKILLed that long into the cut (the host crashed while cut off: what the
    broker had sent it is never read, its sockets answer RST once the link is back). ``admin`` is a
    Redis client of the broker (root namespace); ``monitor`` a started :class:`MonitorLog` of it."""
    victim_workers = worker_ids(admin, victim_pids)
    victim_ip = net.hosts[VICTIM].address
    names = {h.address: h.name for h in net.hosts.values()} | {net.gateway: "root", "127.0.0.1": "root"}
    started = time.monotonic()
    cut_at = restored_at = cut_wall = restored_wall = 0.0
    seen_inflight: set[str] = set()
    watch = _untouching(admin)
    died = False

    def maybe_die() -> None:
        nonlocal died
        if (
            died
            or victim_dies_after_s is None
            or not cut_at
            or time.monotonic() < cut_at + victim_dies_after_s
        ):
            return
        pids = net.pids(VICTIM)
        log(f"{tag}: host {VICTIM} dies while cut off (SIGKILL to {len(pids)} processes)")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        died = True

    with contextlib.closing(watch), _Finals(client, []) as finals:
        for i in range(jobs):
            due = started + submit_s * i / jobs
            while (now := time.monotonic()) < due:
                time.sleep(min(0.01, due - now))
            if not cut_at and time.monotonic() - started >= cut_after_s:
                log(f"{tag}: cutting host {VICTIM} off ({i} jobs submitted)")
                net.cut(VICTIM)
                cut_at, cut_wall = time.monotonic(), time.time()
            finals.add(client.submit(job_request(i, tag)))
            if cut_at and i % 20 == 0:
                seen_inflight |= _inflight(watch, victim_workers, set(finals.ids))
                maybe_die()
        if not cut_at:
            net.cut(VICTIM)
            cut_at, cut_wall = time.monotonic(), time.time()
        while time.monotonic() < cut_at + cut_s:
            seen_inflight |= _inflight(watch, victim_workers, set(finals.ids))
            maybe_die()
            time.sleep(0.25)
        net.restore(VICTIM)
        restored_at, restored_wall = time.monotonic(), time.time()
        final_now = len(finals.done)
        log(f"{tag}: host {VICTIM} back after {restored_at - cut_at:.1f} s; {final_now} of {jobs} final")
        deadline = restored_at + timeout_s
        while not finals.all_final() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(settle_s)  # a superseded run of the victim would write now
        done, final_at = dict(finals.done), dict(finals.final_at)
    ids = list(finals.ids)
    history = monitor.history(set(ids))
    took = {job for job, events in history.items() if held(events, victim_ip, cut_wall)} | seen_inflight
    superseded: Counter[str] = Counter()
    writer: dict[str, str] = {}
    written_at: dict[str, float] = {}
    for job in ids:
        for ip, wrote, at in finishes(job, history.get(job, [])):
            if wrote:
                writer.setdefault(job, names.get(ip, ip))
                written_at.setdefault(job, at)
            else:
                superseded[names.get(ip, ip)] += 1
    outcome = Outcome(
        ids=ids, done=done, final_at=final_at, started=started, cut_at=cut_at, restored_at=restored_at,
        cut_wall=cut_wall, restored_wall=restored_wall, affected=[], superseded=dict(superseded),
        inflight_seen=sorted(seen_inflight), writer=writer, written_at=written_at,
    )  # fmt: skip
    outcome.affected = sorted(took)
    outcome.escalations = sum(1 for job in ids if admin.exists(keys.escalation_by_task(job)))
    outcome.lost_evidence = {job: evidence(admin, history.get(job, []), job, names) for job in outcome.lost}
    return outcome


# --- for bench/chaos.py ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _also_bound(admin: redis.Redis, address: str) -> Iterator[None]:
    """The broker also listening on ``address`` (without protected mode), for the duration."""
    before = str(admin.config_get("bind")["bind"])
    protected = str(admin.config_get("protected-mode")["protected-mode"])
    admin.config_set("bind", f"{before} {address}")
    admin.config_set("protected-mode", "no")
    try:
        yield
    finally:
        admin.config_set("bind", before)
        admin.config_set("protected-mode", protected)


def partition(rig: Any, n: int, *, cut_s: float = 20.0, victim_dies_after_s: float | None = None) -> None:
    """The partition scenario on bench/chaos.py's rig (see the module docstring for the contract)."""
    reason = permitted()
    if reason is not None:
        rig.log(f"partition: skipped: {reason}")
        rig.results["partition"] = {"skipped": reason}
        return
    started = time.monotonic()
    admin = redis.Redis.from_url(rig.broker.url)
    logs = Path(rig.tmp) / "partition"
    logs.mkdir(parents=True, exist_ok=True)
    rig.mock.configure(latency_ms=300, failure_rate=0.0, down_models=[])
    try:
        with network([VICTIM, SURVIVOR]) as net, _also_bound(admin, net.gateway):
            site = SiteServer(rig.mock, net.gateway).start()
            monitor = MonitorLog(rig.broker.url, logs / "monitor.log").start()
            hosts: dict[str, list[Child]] = {}
            try:
                broker_url = f"redis://{net.gateway}:{rig.broker.port}/0"
                hosts = start_hosts(net, broker_url, site.url, logs)
                rig.log(f"partition: hosts {sorted(hosts)} up on {net.gateway}/24")
                victim_pids = [c.pid for c in hosts[VICTIM] if c.pid]
                outcome = run_partition(
                    net, rig.client, admin, victim_pids, jobs=n, monitor=monitor, cut_s=cut_s,
                    victim_dies_after_s=victim_dies_after_s, log=rig.log,
                )  # fmt: skip
            finally:
                stop_hosts(hosts)
                monitor.stop()
                site.stop()
    finally:
        admin.close()
    rig.final_at.update(outcome.final_at)
    rig.record("partition", outcome.ids, outcome.done, started, fault_at=outcome.cut_at)
    rig.results["partition"].update(
        {
            k: v
            for k, v in outcome.summary().items()
            if k not in ("submitted", "completed", "escalated", "lost")
        }
    )
