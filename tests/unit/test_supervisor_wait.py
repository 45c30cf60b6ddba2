"""The supervisor waits out a broker that drops its first connections after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

import fleet.app
from fleet.settings import load_settings
from fleet.supervisor import FleetOptions, Supervisor


class _FlakyControl:
    def __init__(self) -> None:
        self.calls = 0

    def ping(self, destination: list[str], timeout: float) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls == 1:
            raise redis.ConnectionError("Connection closed by server.")
        return [{name: {"ok": "pong"}} for name in destination]


class _FakeApp:
    def __init__(self) -> None:
        self.control = _FlakyControl()

    def close(self) -> None:
        pass


def test_wait_pools_retries_a_ping_the_broker_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a supervisor with one live pool, and a broker whose first answer is a dropped connection
    app = _FakeApp()
    monkeypatch.setattr(fleet.app, "create_app", lambda *a, **k: app)
    settings = load_settings(
        env={"FLEET_STATE_DIR": str(tmp_path), "FLEET_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    events: list[str] = []
    sup = Supervisor(settings, FleetOptions(queues=("router",)), on_event=events.append)

    class _Alive:
        def alive(self) -> bool:
            return True

    sup.pools = {"router": _Alive()}  # type: ignore[dict-item]

    # When it waits for the pools
    sup._wait_pools(timeout=5)

    # Then it asked again instead of failing the start
    assert app.control.calls == 2
    assert any("waiting for the broker" in e for e in events)
    assert events[-1] == "every pool is ready"
