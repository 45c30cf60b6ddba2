"""Security defaults: Flower needs auth off loopback, the API needs its token, and secrets (canary
keys) are masked in `fleet config show` and never travel in a task's arguments (what Flower shows).
Logs, results and escalation records are checked by test_fallback.py."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fleet.api import create_api
from fleet.errors import FleetError
from fleet.procs import Child
from fleet.producer import Client
from fleet.settings import Settings, load_settings
from fleet.supervisor import FleetOptions, Supervisor

from ..conftest import flush_fleet_keys, other_db_url
from .conftest import CANARY_KEYS
from .procs import run

pytestmark = pytest.mark.integration

FLOWER_AUTH = "admin:flower-canary-77ab"


def _settings(tmp_path: Path, **env: str) -> Settings:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return load_settings(profile="demo", env={**base, "FLEET_STATE_DIR": str(tmp_path), **env})


def test_flower_off_loopback_without_auth_refuses_to_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path, FLEET_FLOWER__ADDRESS="0.0.0.0")
    sup = Supervisor(settings, FleetOptions(flower_port=0, log_dir=tmp_path))
    with pytest.raises(FleetError, match="without authentication"):
        sup._start_flower()
    assert sup.flower is None


def test_flower_with_basic_auth_gets_it_and_no_unauthenticated_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Child] = []
    monkeypatch.setattr(Child, "start", lambda self, **_: started.append(self))
    settings = _settings(tmp_path, FLEET_FLOWER__ADDRESS="0.0.0.0", FLEET_FLOWER_BASIC_AUTH=FLOWER_AUTH)
    sup = Supervisor(settings, FleetOptions(flower_port=0, log_dir=tmp_path))
    sup._start_flower()
    assert [c.name for c in started] == ["flower"]
    assert started[0].env["FLOWER_BASIC_AUTH"] == FLOWER_AUTH
    assert "FLOWER_UNAUTHENTICATED_API" not in started[0].env
    assert FLOWER_AUTH not in " ".join(started[0].argv)


def test_the_api_requires_its_token(broker_url: str, tmp_path: Path) -> None:
    api = create_api(_settings(tmp_path), other_db_url(broker_url), token="api-canary-token")
    with TestClient(api) as http:
        assert http.get("/healthz").status_code == 200
        assert http.post("/v1/tasks", json={"prompt": "hi"}).status_code == 401
        assert http.get("/v1/escalations", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_config_show_masks_every_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(CANARY_KEYS, FLEET_STATE_DIR=str(tmp_path), FLEET_FLOWER_BASIC_AUTH=FLOWER_AUTH,
               FLEET_REDIS_URL="redis://:broker-canary-pw@127.0.0.1:6390/0")  # fmt: skip
    done = run(["config", "show", "--json"], env)
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    for secret in (*CANARY_KEYS.values(), FLOWER_AUTH, "broker-canary-pw"):
        assert secret not in shown
    data = json.loads(done.stdout)
    assert data["providers"]["openai"]["api_key"] == "***"
    assert data["flower"]["basic_auth"] == "***"


def _readable(message: bytes) -> bytes:
    """A queued kombu message with its (base64) body decoded."""
    data = json.loads(message)
    body = data["body"]
    if data["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    return (json.dumps(data["headers"]) + body).encode()


def test_task_arguments_carry_the_request_never_a_key(broker_url: str, tmp_path: Path) -> None:
    # Given a producer whose settings hold the canary API keys, on a database no worker reads
    url = other_db_url(broker_url)
    settings = _settings(tmp_path, **CANARY_KEYS)
    client = Client(settings, redis_url=url)
    try:
        client.submit({"prompt": "Rename a to b", "metadata": {"team": "search"}})
        client.submit({"prompt": "Rename c to d", "tier": "mini"})
        # Then the queued messages (args, argsrepr: what Flower shows) hold the request, no key
        raw = b"".join(_readable(m) for q in ("router", "mini") for m in client.redis.lrange(q, 0, -1))
        assert b"Rename a to b" in raw and b"Rename c to d" in raw
        for secret in CANARY_KEYS.values():
            assert secret.encode() not in raw
    finally:
        client.close()
        flush_fleet_keys(url)
