"""Session fixtures: a real broker (embedded valkey-server, and FLEET_TEST_REDIS_URL when set)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from fleet.embedded import EmbeddedBroker

REPO = Path(__file__).resolve().parents[1]

# Every fleet a test starts runs without the quality gate and the mock's simulated quality unless the
# test turns them on (tests/integration/test_quality_gate.py): most tests ask for exact tiers, calls
# and answers, which a judge's upgrade would change.
os.environ.setdefault("FLEET_QUALITY__ENABLED", "false")
os.environ.setdefault("FLEET_MOCK__SIMULATE_QUALITY", "false")


def _broker_params() -> list[str]:
    params = ["embedded"]
    if os.environ.get("FLEET_TEST_REDIS_URL"):
        params.append("external")
    return params


@pytest.fixture(scope="session", params=_broker_params())
def broker_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL for the session: an embedded valkey-server on a free port, or the machine's Redis."""
    if request.param == "external":
        url = os.environ["FLEET_TEST_REDIS_URL"]
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker"))
    url = broker.start()
    yield url
    broker.stop()


def other_db_url(url: str) -> str:
    """The same server, the next database: for a fleet that must not share queues with the session's."""
    parts = urlsplit(url)
    current = int(parts.path.strip("/") or 0)
    return urlunsplit((parts.scheme, parts.netloc, f"/{(current + 1) % 16}", parts.query, parts.fragment))


def flush_fleet_keys(url: str) -> None:
    """A clean database for the next test, keeping kombu's queue bindings (workers hold them)."""
    client = redis.Redis.from_url(url)
    try:
        doomed = [k for k in client.scan_iter(count=1000) if not k.startswith(b"_kombu.binding.")]
        for start in range(0, len(doomed), 500):
            client.delete(*doomed[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def clean_redis(broker_url: str) -> Iterator[redis.Redis]:
    """A Redis client on a database emptied for this test."""
    flush_fleet_keys(broker_url)
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()
