"""Scenario 2: the embedded broker is SIGKILLed mid-run and restarted on the same port and data
directory; producers and workers reconnect, and every accepted job reaches a final state."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fleet.embedded import EmbeddedBroker
from fleet.errors import BrokerError

from .chaosrig import chaos_fleet, wait_for

pytestmark = pytest.mark.integration


def _prompt(i: int) -> dict[str, object]:
    return {"prompt": f"Rename variable v{i} to value_{i}", "tier": "mini"}


def _run(tmp: Path, total: int, timeout: float) -> None:
    broker = EmbeddedBroker(tmp / "broker")  # append-only file on, appendfsync everysec
    broker.start()
    env = {"FLEET_BROKER__VISIBILITY_TIMEOUT_S": "8"}
    try:
        with chaos_fleet(tmp, env=env, scale={"mini": 4}, mock_latency_ms=300, broker=broker) as fleet:
            # Given half the jobs accepted, and more than a second for the AOF to reach the disk
            first = [fleet.client.submit(_prompt(i)) for i in range(total // 2)]
            time.sleep(1.5)
            wait_for(lambda: len(fleet.client.peek(first)) >= total // 10, 30, "the run to get going")
            assert len(fleet.client.peek(first)) < total // 2  # still running when the broker dies

            # When the broker is SIGKILLed while jobs run, and a producer keeps submitting
            second: list[str] = []
            refused = 0

            def produce() -> None:
                nonlocal refused
                for i in range(total // 2, total):
                    while True:
                        try:
                            second.append(fleet.client.submit(_prompt(i)))
                            break
                        except BrokerError:
                            refused += 1  # not accepted (a clean error): retried, as a service would
                            time.sleep(0.2)

            port = broker.port
            broker.kill()
            producer = threading.Thread(target=produce)
            producer.start()
            time.sleep(1.0)
            # ... and comes back on the same port and data directory
            restarted = EmbeddedBroker(tmp / "broker", port=port)
            restarted.start()
            try:
                producer.join(60)
                assert not producer.is_alive()

                # Then every job accepted before or after the crash reaches a final state
                ids = first + second
                done = fleet.wait_final(ids, timeout=timeout)
                assert len(ids) == total
                missing = [i for i in ids if i not in done]
                assert missing == [], f"{len(missing)} of {total} jobs lost"
                assert {r.status for r in done.values()} <= {"completed", "escalated"}
                assert len(done) < total or not fleet.client.redis.llen("mini")  # drained
                assert all(p.alive() for p in fleet.supervisor.pools.values())
            finally:
                restarted.stop()
    finally:
        broker.stop()


# 17-19 s: in `make chaos`, so the suite keeps within CI's budget; test_recovery.py's broker outage (every
# tier mid-call, a producer refused then accepted) is in `make test`.
@pytest.mark.chaos
def test_broker_killed_and_restarted_mid_run_no_job_is_lost(tmp_path: Path) -> None:
    _run(tmp_path, total=150, timeout=90)


@pytest.mark.chaos
def test_broker_killed_and_restarted_mid_run_of_1000_jobs(tmp_path: Path) -> None:
    _run(tmp_path, total=1000, timeout=300)
