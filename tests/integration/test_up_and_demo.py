"""`fleet up` in one terminal, commands in another; `fleet demo` end to end; nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .procs import FLEET, marked_env, run, wait_no_processes

pytestmark = pytest.mark.integration


def _clean_env(tmp_path: Path) -> tuple[dict[str, str], str]:
    env, marker = marked_env()
    for var in [v for v in env if v.startswith("FLEET_") and v != "FLEET_TEST_MARKER"]:
        env.pop(var)
    env["FLEET_STATE_DIR"] = str(tmp_path / ".fleet")
    return env, marker


def test_up_serves_commands_from_another_terminal_and_stops_clean(tmp_path: Path) -> None:
    # Given `fleet up --profile demo` with no broker configured
    env, marker = _clean_env(tmp_path)
    up = subprocess.Popen([*FLEET, "up", "--profile", "demo", "--flower-port", "0"], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        state = tmp_path / ".fleet" / "fleet.json"
        deadline = time.monotonic() + 60
        while not state.exists() and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.2)
        assert state.exists(), up.stdout.read() if up.stdout else ""
        assert json.loads(state.read_text())["redis_url"].startswith("redis://127.0.0.1:")
        assert (tmp_path / ".fleet" / "broker" / "appendonlydir").is_dir()

        # When another terminal submits and reads, finding the fleet by itself
        other = {k: v for k, v in env.items() if k != "FLEET_TEST_MARKER"}
        done = run(["submit", "Write a haiku about queues", "--wait", "30", "--json"], other)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed"
        status = run(["status", "--json"], other)
        assert json.loads(status.stdout)["queues"]["full"]["workers"] == 1

        # And Flower lists one worker per queue
        flower_url = json.loads(state.read_text())["flower_url"]
        workers: dict[str, object] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(workers) < 7:
            try:
                workers = httpx.get(f"{flower_url}/api/workers?refresh=1", timeout=10).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.5)
        names = {name.split("@")[0] for name in workers}
        assert names == {"router", "mini", "standard", "full", "fast", "batch", "escalations"}
    finally:
        # Then SIGTERM stops it cleanly, and no process it started is left
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert "fleet stopped" in out
    assert wait_no_processes(marker) == []
    assert not (tmp_path / ".fleet" / "fleet.json").exists()


def test_commands_without_a_fleet_say_how_to_start_one(tmp_path: Path) -> None:
    env, _ = _clean_env(tmp_path)
    done = run(["status"], env)
    assert done.returncode == 4
    assert "fleet up" in done.stderr and "FLEET_REDIS_URL" in done.stderr


def test_demo_json_summary_and_no_process_left(tmp_path: Path) -> None:
    env, marker = _clean_env(tmp_path)
    done = subprocess.run([*FLEET, "demo", "--tasks", "40", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["submitted"] == 40
    assert summary["lost"] == 0
    assert summary["completed"] + summary["escalated"] == 40
    assert set(summary["by_tier"]) == {"mini", "standard", "full", "fast"}
    assert sum(summary["by_tier"].values()) == 40
    assert 0 < summary["cost_usd"] < summary["cost_all_full_usd"]
    # A share of the workload can wait: answered from provider batches (SIMULATED), at half price
    assert summary["batch_jobs"] > 0 and summary["batch_saving_usd"] > 0, summary
    assert summary["cache_saving_usd"] >= 0
    assert summary["p99_ms"] >= summary["p50_ms"] > 0
    assert summary["broker"].startswith("redis://127.0.0.1:")
    assert wait_no_processes(marker) == []


def test_demo_interrupted_leaves_no_process(tmp_path: Path) -> None:
    env, marker = _clean_env(tmp_path)
    demo = subprocess.Popen([*FLEET, "demo", "--tasks", "5000", "--json"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        # wait until the pools are up (the broker and workers exist), then press Ctrl-C
        while time.monotonic() < deadline and len(wait_no_processes(marker, timeout=0)) < 8:
            time.sleep(0.3)
        time.sleep(2)
    finally:
        os.kill(demo.pid, signal.SIGINT)
        demo.communicate(timeout=90)
    assert demo.returncode != 0
    assert wait_no_processes(marker) == []
