"""`fleet submit`, `result`, `status` and `config show` as a user runs them, against a running fleet."""

from __future__ import annotations

import json

import pytest

from .conftest import RunningFleet
from .procs import run

pytestmark = pytest.mark.integration


def test_submit_then_result_then_status(clean_fleet: RunningFleet) -> None:
    env = clean_fleet.env()
    prompt = "Extract the order id from: 'Order #A-1234 shipped'"
    submitted = run(["submit", prompt, "--kind", "extract.order", "--complexity", "low", "--json"], env)
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout.strip().splitlines()[-1])["task_id"]

    shown = run(["result", task_id, "--wait", "30", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    res = json.loads(shown.stdout.strip().splitlines()[-1])
    assert res["status"] == "completed"
    assert res["tier"] == "mini"
    assert res["routing"]["reasons"]

    human = run(["result", task_id], env)
    assert "mini" in human.stdout and "answer" in human.stdout

    status = run(["status", "--json"], env)
    assert status.returncode == 0, status.stderr
    queues = json.loads(status.stdout.strip().splitlines()[-1])["queues"]
    for queue in ("router", "mini", "standard", "full", "fast", "escalations"):
        assert queues[queue]["workers"] >= 1, queue
        assert queues[queue]["concurrency"] >= 1, queue


def test_submit_reads_the_prompt_from_stdin(clean_fleet: RunningFleet) -> None:
    done = run(["submit", "-", "--tier", "fast", "--wait", "30", "--json"], clean_fleet.env(),
               input="What is 2 + 2?")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["tier"] == "fast"


def test_invalid_submit_exits_with_a_clear_error(clean_fleet: RunningFleet) -> None:
    done = run(["submit", "   ", "--json"], clean_fleet.env())
    assert done.returncode == 6
    error = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    assert error["code"] == "invalid_request"
    assert "prompt" in error["message"]


def test_config_show_masks_secrets(fleet: RunningFleet) -> None:
    env = fleet.env()
    env["OPENAI_API_KEY"] = "sk-canary-0123456789"
    env["FLEET_REDIS_URL"] = "redis://:hunter2-canary@127.0.0.1:1/0"
    env["FLEET_BROKER_URL"] = "amqp://fleet:hunter2-canary@127.0.0.1:5672/"
    shown = run(["config", "show", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    assert "sk-canary" not in shown.stdout and "hunter2-canary" not in shown.stdout
    data = json.loads(shown.stdout)
    assert data["providers"]["openai"]["api_key"] == "***"
    assert data["broker"]["redis_url"] == "redis://:***@127.0.0.1:1/0"
    assert data["broker"]["url"] == "amqp://fleet:***@127.0.0.1:5672/"


def test_bad_config_names_the_file_and_key(fleet: RunningFleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    shutil.copytree(fleet.settings.config_dir + "/config", tmp_path / "config")
    shutil.copytree(fleet.settings.config_dir + "/queues", tmp_path / "queues")
    qfile = tmp_path / "queues" / "full.toml"
    qfile.write_text(qfile.read_text().replace('rate_limit = "300/m"', 'rate_limit = "10/x"'))
    env = fleet.env()
    env["FLEET_CONFIG_DIR"] = str(tmp_path)
    shown = run(["config", "show"], env)
    assert shown.returncode == 3
    assert "full.toml" in shown.stderr and "rate_limit" in shown.stderr
