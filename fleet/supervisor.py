"""``fleet up`` and ``fleet demo``: the broker, the mock provider, one worker pool per queue, Flower.

Start order: broker -> mock provider -> worker pools -> Flower; stop order is the reverse, and the
pools get a warm shutdown (SIGTERM: in-flight jobs finish; prefetched ones go back to their queue,
and with late acks anything unfinished is redelivered). Children run in sessions of their own and
die with the supervisor (PR_SET_PDEATHSIG), so no process outlives it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet.boundary import BROKER_ERRORS
from fleet.brokers import is_amqp
from fleet.discovery import clear_state, redis_client, write_state
from fleet.embedded import EmbeddedBroker, free_port, port_in_use
from fleet.errors import FleetError
from fleet.keys import QUEUES
from fleet.procs import Child
from fleet.settings import Settings, mask_url

__all__ = ["FleetOptions", "Supervisor", "is_loopback"]

_MOCK_READY = re.compile(rb"listening on (http://\S+)")


def is_loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


@dataclass
class FleetOptions:
    """What to start, beyond what settings say."""

    queues: tuple[str, ...] = QUEUES
    #: queue -> concurrency, overriding queues/<queue>.toml.
    scale: dict[str, int] = field(default_factory=dict)
    flower: bool = True
    #: Flower's port; None: from settings (0 picks a free one).
    flower_port: int | None = None
    #: Data directory of an embedded broker; None: <state_dir>/broker.
    broker_dir: Path | None = None
    log_dir: Path | None = None
    #: Write <state_dir>/fleet.json so other terminals find this fleet.
    publish_state: bool = True
    #: Seconds the pools get to finish in-flight jobs on stop.
    shutdown_grace_s: float = 30.0
    loglevel: str = "INFO"
    #: Extra environment for the pools (e.g. FLEET_* overrides that must reach the workers).
    env: dict[str, str] = field(default_factory=dict)


class Supervisor:
    """Starts and stops one fleet. Use as a context manager, or ``start()`` then ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        options: FleetOptions | None = None,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or FleetOptions()
        self.on_event = on_event or (lambda _msg: None)
        self.broker: EmbeddedBroker | None = None
        broker = settings.broker
        #: The Redis of the fleet's state (and its messages unless broker.url is a RabbitMQ).
        self.redis_url = broker.redis_url or (broker.url if broker.url and not is_amqp(broker.url) else "")
        self.mock: Child | None = None
        self.mock_url = settings.mock.url
        self.pools: dict[str, Child] = {}
        self.flower: Child | None = None
        self.flower_url: str | None = None
        state = Path(settings.state_dir)
        self.log_dir = self.options.log_dir or state / "logs"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, ready_timeout: float = 90.0) -> None:
        """Start everything and wait until every pool answers a ping.

        Raises:
            FleetError: a part did not start; whatever had started is stopped again.
        """
        try:
            self._start_broker()
            self._start_mock()
            for queue in self.options.queues:
                self._start_pool(queue)
            if self.options.flower:
                self._start_flower()
            self._wait_pools(ready_timeout)
            if self.options.publish_state:
                write_state(
                    self.settings,
                    redis_url=self.redis_url,
                    flower_url=self.flower_url,
                    mock_url=self.mock_url or None,
                    pools=sorted(self.pools),
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop pools (warm shutdown), Flower, the mock provider, then the broker. Idempotent."""
        grace = self.options.shutdown_grace_s
        for child in self.pools.values():
            child.signal(15)
        for name, child in self.pools.items():
            if not child.wait(grace):
                self.on_event(f"pool {name} did not stop within {grace:.0f} s: killing it")
            child.stop(1.0)
        for extra in (self.flower, self.mock):
            if extra is not None:
                extra.stop(5.0)
        if self.broker is not None:
            self.on_event("stopping the embedded broker")
            self.broker.stop()
            self.broker = None
        if self.options.publish_state:
            clear_state(self.settings)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check(self) -> list[str]:
        """Restart pools that died; returns a line per restart (for the foreground display)."""
        events = []
        for name, child in self.pools.items():
            if not child.alive():
                code = child.process.returncode if child.process else None
                child.restarts += 1
                events.append(f"pool {name} exited ({code}); restart #{child.restarts}")
                child.start()
        return events

    # -- parts -------------------------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLEET_REDIS_URL"] = self.redis_url
        if self.settings.broker.url and is_amqp(self.settings.broker.url):
            env["FLEET_BROKER_URL"] = self.settings.broker.url
        env["FLEET_CONFIG_DIR"] = self.settings.config_dir
        env["FLEET_STATE_DIR"] = self.settings.state_dir
        if self.settings.profile:
            env["FLEET_PROFILE"] = self.settings.profile
        telemetry = self.settings.telemetry
        if telemetry.trace_file:
            env["FLEET_TELEMETRY__TRACE_FILE"] = telemetry.trace_file  # every pool appends its spans
        if telemetry.capture_content:
            env["FLEET_TELEMETRY__CAPTURE_CONTENT"] = "true"
        if self.settings.mock.enabled:
            env["FLEET_MOCK__ENABLED"] = "true"
            env["FLEET_MOCK__URL"] = self.mock_url
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.options.env)
        return env

    def _start_broker(self) -> None:
        if self.redis_url:
            # Before any pool starts: an unreachable broker is one line (BrokerError), not six pools
            # retrying their connections.
            redis_client(self.settings, self.redis_url).ping()
            self.on_event(f"redis: {mask_url(self.redis_url)}")
            return
        data_dir = self.options.broker_dir or Path(self.settings.state_dir) / "broker"
        self.broker = EmbeddedBroker(
            data_dir, port=self.settings.embedded.port, appendonly=self.settings.embedded.appendonly
        )
        self.redis_url = self.broker.start()
        self.on_event(f"embedded broker: {self.redis_url} (data in {data_dir})")

    def _start_mock(self) -> None:
        mock = self.settings.mock
        if not mock.enabled or self.mock_url:
            return
        argv = [
            sys.executable, "-m", "fleet.providers.mock_server",
            "--port", str(mock.port),
            "--failure-rate", str(mock.failure_rate),
            "--latency-ms", str(mock.latency_ms),
            "--seed", str(mock.seed),
            "--timeout-sleep-s", str(mock.timeout_sleep_s),
        ]  # fmt: skip
        patch: dict[str, object] = {
            "batch_delay_s": mock.batch_delay_s,
            "batch_failure_rate": mock.batch_failure_rate,
            "prompt_cache": mock.prompt_cache,
        }
        if mock.simulate_quality:
            patch["quality"] = {"enabled": True}
        argv += ["--config-json", json.dumps(patch)]
        self.mock = Child("mock-provider", argv, env=dict(os.environ), log_file=self.log_dir / "mock.log")
        self.mock.start(capture_stdout=True)
        assert self.mock.process is not None and self.mock.process.stdout is not None
        deadline = time.monotonic() + 30
        line = b""
        while time.monotonic() < deadline:
            line = self.mock.process.stdout.readline()
            match = _MOCK_READY.search(line)
            if match:
                self.mock_url = match.group(1).decode()
                break
            if not line and not self.mock.alive():
                break
        if not self.mock_url:
            raise FleetError(f"the mock provider did not start: {self.mock.log_tail()}")
        simulated = ", SIMULATED model quality" if mock.simulate_quality else ""
        self.on_event(f"mock provider: {self.mock_url} (failure rate {mock.failure_rate:.0%}{simulated})")

    def _start_pool(self, queue: str) -> None:
        from fleet.worker import worker_argv, worker_env  # deferred: the supervisor itself needs no tasks

        qs = self.settings.queues[queue]
        concurrency = self.options.scale.get(queue, qs.concurrency)
        # An explicit --scale wins over the queue's autoscale range.
        autoscale = None if queue in self.options.scale else qs.autoscale
        # One node per worker process: "mini", then "mini-2", "mini-3" ... (pools keyed the same).
        for i in range(qs.processes):
            name = queue if i == 0 else f"{queue}-{i + 1}"
            argv = [
                sys.executable, "-m", "celery", "-A", "fleet.worker",
                *worker_argv(
                    queue,
                    concurrency=concurrency,
                    pool=qs.pool,
                    hostname=f"{name}@{socket.gethostname()}",
                    loglevel=self.options.loglevel,
                    autoscale=autoscale,
                ),
            ]  # fmt: skip
            env = {**self._child_env(), **worker_env(qs.pool)}
            child = Child(name, argv, env=env, log_file=self.log_dir / f"{name}.log")
            child.start()
            self.pools[name] = child
        size = f"autoscale {autoscale[0]}-{autoscale[1]}" if autoscale else str(concurrency)
        procs = f"{qs.processes} processes x " if qs.processes > 1 else ""
        self.on_event(f"pool {queue}: {procs}{qs.pool} x {size}")

    def _start_flower(self) -> None:
        flower = self.settings.flower
        port = self.options.flower_port if self.options.flower_port is not None else flower.port
        if port == 0:
            port = free_port()
        elif port_in_use(port, flower.address if is_loopback(flower.address) else "0.0.0.0"):
            raise FleetError(
                f"Flower's port {port} is already in use: pass --flower-port (0 picks a free one) "
                "or stop what listens there"
            )
        env = self._child_env()
        if flower.basic_auth is not None:
            env["FLOWER_BASIC_AUTH"] = flower.basic_auth.get_secret_value()
        elif not is_loopback(flower.address):
            raise FleetError(
                f"Flower would listen on {flower.address} without authentication: set "
                "FLEET_FLOWER_BASIC_AUTH=user:password, or keep [flower] address on 127.0.0.1"
            )
        else:
            env["FLOWER_UNAUTHENTICATED_API"] = "true"  # loopback only: its JSON API for local tools
        argv = [
            sys.executable, "-m", "celery", "-A", "fleet.app", "flower",
            f"--address={flower.address}", f"--port={port}",
        ]  # fmt: skip
        self.flower = Child("flower", argv, env=env, log_file=self.log_dir / "flower.log")
        self.flower.start()
        self.flower_url = f"http://{flower.address}:{port}"
        self.on_event(f"flower: {self.flower_url}")

    def _wait_pools(self, timeout: float) -> None:
        from fleet.app import create_app

        app = create_app(self.settings, self.redis_url)
        waiting = {f"{name}@{socket.gethostname()}": name for name in self.pools}
        deadline = time.monotonic() + timeout
        try:
            while waiting:
                for queue in list(waiting.values()):
                    child = self.pools[queue]
                    if not child.alive():
                        raise FleetError(f"pool {queue} exited on start:\n{child.log_tail()}")
                try:
                    replies = app.control.ping(destination=list(waiting), timeout=0.5) or []
                except BROKER_ERRORS as exc:
                    # A broker that just restarted can drop the first connections: ask again.
                    self.on_event(f"waiting for the broker: {type(exc).__name__}")
                    replies = []
                    time.sleep(0.2)
                for reply in replies:
                    for name in reply:
                        waiting.pop(name, None)
                if waiting and time.monotonic() > deadline:
                    names = ", ".join(sorted(waiting.values()))
                    raise FleetError(f"pools not ready after {timeout:.0f} s: {names}")
        finally:
            app.close()
        self.on_event("every pool is ready")
