"""Scenario 3: a deploy. SIGTERM `fleet up` mid-run and start it again on the same state directory:
in-flight jobs finish (warm shutdown) or are redelivered, queued ones wait; nothing is lost."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleet.embedded import free_port
from fleet.producer import Client
from fleet.settings import load_settings

from .procs import FLEET, marked_env, wait_no_processes

pytestmark = pytest.mark.integration


def _up(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*FLEET, "up", "--profile", "demo", "--no-flower"], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    state = cwd / ".fleet" / "fleet.json"
    deadline = time.monotonic() + 90
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), proc.stdout.read() if proc.stdout and proc.poll() is not None else "not up"
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    return out


def _deploy(tmp_path: Path, total: int, timeout: float) -> None:
    env, marker = marked_env()
    for var in [v for v in env if v.startswith("FLEET_") and v != "FLEET_TEST_MARKER"]:
        env.pop(var)
    port = free_port()
    env.update(
        FLEET_STATE_DIR=str(tmp_path / ".fleet"),
        FLEET_EMBEDDED__PORT=str(port),  # the same broker address across the restart
        FLEET_MOCK__LATENCY_MS="800",  # jobs are in flight when the deploy starts
        # The demo profile's SIMULATED quality escalates some answers on purpose: not what this asks
        FLEET_QUALITY__ENABLED="false",
        FLEET_MOCK__SIMULATE_QUALITY="false",
    )
    url = f"redis://127.0.0.1:{port}/0"
    settings = load_settings(profile="demo", env={**env, "FLEET_REDIS_URL": url})
    up = _up(env, tmp_path)
    client = Client(settings, redis_url=url)
    try:
        # Given a run under way
        ids = [client.submit({"prompt": f"Rename field f{i} to g{i}", "tier": "mini"}) for i in range(total)]
        deadline = time.monotonic() + 30
        while len(client.peek(ids)) < total // 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = len(client.peek(ids))
        assert before < total  # mid-run

        # When the fleet is SIGTERMed (a deploy) and started again on the same state directory
        out = _stop(up)
        assert up.returncode == 0, out
        assert "fleet stopped" in out
        assert (tmp_path / ".fleet" / "broker" / "appendonlydir").is_dir()
        up = _up(env, tmp_path)

        # Then every job reaches a final state: none lost, none run twice to two results
        deadline = time.monotonic() + timeout
        done = client.peek(ids)
        while len(done) < total and time.monotonic() < deadline:
            time.sleep(0.3)
            done = client.peek(ids)
        assert len(done) == total, f"{total - len(done)} of {total} jobs lost across the deploy"
        assert {r.status for r in done.values()} == {"completed"}
        assert json.loads((tmp_path / ".fleet" / "fleet.json").read_text())["redis_url"] == url
    finally:
        client.close()
        if up.poll() is None:
            _stop(up)
    assert wait_no_processes(marker) == []


def test_sigterm_mid_run_and_restart_loses_nothing(tmp_path: Path) -> None:
    _deploy(tmp_path, total=60, timeout=60)


@pytest.mark.chaos
def test_sigterm_mid_run_of_400_jobs_and_restart_loses_nothing(tmp_path: Path) -> None:
    _deploy(tmp_path, total=400, timeout=240)
