"""More than one machine, tested: worker hosts in network namespaces of their own (tests/integration/
netns.py), the broker and the mock provider in the root namespace on a bridge. One host is cut off
from everything for 20 s mid-run (its link down: no RST, no FIN, a pulled cable), then comes back.

The fleet's recovery must see it through (docs/reliability.md): the cut host's heartbeat lapses, a
live worker's reaper gives its messages back, their jobs' locks are taken over, and they finish on the
other host before the cut one is back; when it is, its superseded runs write nothing. A host that
dies while cut off (it never reads what the broker sent it) loses nothing either: that is what
reliable fetch (fleet/transport.py) is for. Needs root and ``ip netns``: skipped, saying why, where
namespaces cannot be made.

The scenario itself is bench/_partition.py's :func:`run_partition` (also for bench/chaos.py).
``FLEET_TEST_MULTIHOST_ENV`` (a JSON object) adds to the hosts' worker environment, to run the same
test under other settings, e.g. ``{"FLEET_RECOVERY__RELIABLE_FETCH": "false"}``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.embedded import EmbeddedBroker
from fleet.procs import Child
from fleet.producer import Client
from fleet.providers.mock_server import MockConfig
from fleet.settings import load_settings

from . import netns

# The scenario is bench/_partition.py, which bench/chaos.py imports as `_partition` (the benchmarks
# run as scripts from bench/): imported here under the same name.
if str(Path(__file__).resolve().parents[2] / "bench") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _partition import (
    SURVIVOR,
    VICTIM,
    CallWatch,
    MonitorLog,
    Outcome,
    ResultWrites,
    SiteServer,
    run_partition,
    start_hosts,
    stop_hosts,
)

pytestmark = pytest.mark.integration

#: How long the host stays cut off: longer than a heartbeat's life (recovery.worker_ttl_s, 12 s) and
#: the reaper's patience (recovery.orphan_after_s, 12 s), so its jobs must come back without it.
CUT_S = 20.0
JOBS = 300
#: Each model call takes this long: a host holds several jobs mid-call when it is cut.
LATENCY_MS = 300


@pytest.fixture
def net() -> Iterator[netns.Network]:
    reason = netns.permitted()
    if reason is not None:
        pytest.skip(reason)
    with netns.network([VICTIM, SURVIVOR]) as made:
        yield made


def _extra_env() -> dict[str, str]:
    raw = os.environ.get("FLEET_TEST_MULTIHOST_ENV", "")
    extra = json.loads(raw) if raw else {}
    assert isinstance(extra, dict), "FLEET_TEST_MULTIHOST_ENV must be a JSON object"
    return {str(k): str(v) for k, v in extra.items()}


@dataclass
class Site:
    """The root namespace's side (broker, watched mock provider, observers, a producer) and the
    hosts' worker processes."""

    net: netns.Network
    broker: EmbeddedBroker
    watch: CallWatch
    writes: ResultWrites
    monitor: MonitorLog
    client: Client
    admin: redis.Redis
    hosts: dict[str, list[Child]] = field(default_factory=dict)

    def run(self, **options: Any) -> tuple[Outcome, dict[str, Any]]:
        """The scenario (bench/_partition.py), and its numbers (also printed: ``pytest -s``)."""
        victim_pids = [child.pid for child in self.hosts[VICTIM] if child.pid]
        outcome = run_partition(
            self.net, self.client, self.admin, victim_pids, jobs=JOBS, monitor=self.monitor,
            cut_s=CUT_S, log=print, **options,
        )  # fmt: skip
        summary = {
            **outcome.summary(),
            "results_written_twice": len(self.writes.twice(outcome.ids)),
            "concurrent_live_runs": len(self.watch.concurrent),
            "calls_after_caller_died": len(self.watch.after_death),
            "model_calls": sum(self.watch.calls.values()),
        }
        print("MULTIHOST", json.dumps(summary))
        return outcome, summary


@contextmanager
def site(net: netns.Network, tmp: Path) -> Iterator[Site]:
    """The broker and the mock provider in the root namespace, on the bridge's address (the broker
    also on 127.0.0.1, for the producer and the observers), and on each host a router worker and a
    mini worker; all of it stopped on the way out."""
    bind = ["--bind", "127.0.0.1", net.gateway, "--protected-mode", "no"]
    broker = EmbeddedBroker(tmp / "broker", extra_args=bind)
    broker.start()
    watch = CallWatch(MockConfig(latency_ms=LATENCY_MS))
    server = SiteServer(watch, net.gateway).start()
    writes = ResultWrites(broker.url).start()
    monitor = MonitorLog(broker.url, tmp / "monitor.log").start()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    settings = load_settings(profile="demo", env={**base, "FLEET_REDIS_URL": broker.url})
    made = Site(net, broker, watch, writes, monitor, Client(settings, redis_url=broker.url),
                redis.Redis.from_url(broker.url))  # fmt: skip
    try:
        broker_url = f"redis://{net.gateway}:{broker.port}/0"
        made.hosts = start_hosts(net, broker_url, server.url, tmp / "logs", env=_extra_env())
        yield made
    finally:
        stop_hosts(made.hosts)
        monitor.stop()
        writes.stop()
        made.client.close()
        made.admin.close()
        server.stop()
        broker.stop()


def test_a_host_cut_off_mid_run_loses_nothing_and_its_jobs_finish_elsewhere(
    net: netns.Network, tmp_path: Path
) -> None:
    # Given the broker and the mock provider on the bridge, and hosts a and b, each running a router
    # worker and a mini worker
    with site(net, tmp_path) as fleet:
        # When 300 jobs flow in over 8 s and, 3 s in, host a is cut off for 20 s, then comes back
        outcome, summary = fleet.run()

        # Then every job reached a final state, completed: none was lost
        assert outcome.lost == [], json.dumps(outcome.lost_evidence, indent=1)[:6000]
        assert set(outcome.done.values()) == {"completed"}
        # And host a held jobs when it was cut; every one of them finished on the other host, before
        # a's link came back, within the cut
        assert outcome.affected, "host a held no job at the cut: nothing was tested"
        assert outcome.late == [], f"finished only after host a was back: {outcome.late}"
        assert outcome.written_by_victim == [], "host a wrote results of jobs taken over from it"
        assert outcome.recovery_s is not None and outcome.recovery_s <= CUT_S, summary
        # And no final result was written twice: host a's superseded runs wrote nothing
        assert fleet.writes.twice(outcome.ids) == []
        # And no two live workers ran one job at the same time
        assert fleet.watch.concurrent == set()


# 35 s: in `make chaos`, so the suite keeps within CI's budget; the cut-off test above is in `make test`.
@pytest.mark.chaos
def test_a_host_that_dies_while_cut_off_loses_nothing(net: netns.Network, tmp_path: Path) -> None:
    # Given the broker and the mock provider on the bridge, and hosts a and b, each running a router
    # worker and a mini worker
    with site(net, tmp_path) as fleet:
        # When host a is cut off mid-run and, 2 s later, dies (every process SIGKILLed): what the
        # broker handed it after the cut is never read
        outcome, summary = fleet.run(victim_dies_after_s=2.0)

        # Then every job reached a final state: none was lost on its way to the dead host
        assert outcome.lost == [], json.dumps(outcome.lost_evidence, indent=1)[:6000]
        assert set(outcome.done.values()) == {"completed"}
        # And every job host a held or was handed finished on the other host, within the cut
        assert outcome.affected, "host a held no job at the cut: nothing was tested"
        assert outcome.late == [], f"finished only after host a's link was back: {outcome.late}"
        assert outcome.recovery_s is not None and outcome.recovery_s <= CUT_S, summary
        # And no final result was written twice, and no two live workers ran one job at a time
        assert fleet.writes.twice(outcome.ids) == []
        assert fleet.watch.concurrent == set()
