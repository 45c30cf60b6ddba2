"""The escalation inbox through `fleet escalations ...` as people run it, against the real fleet."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from fleet.models import TaskResult

from .conftest import RunningFleet
from .procs import FLEET, run

pytestmark = pytest.mark.integration


def fail_every_model(fleet: RunningFleet) -> None:
    """Every model of every provider answers 400: each chain is exhausted at once, no breaker opens."""
    models = {m for p in fleet.settings.providers.values() for m in p.models}
    fleet.mock_config(faults_by_model={m: {"bad_request": 1.0} for m in models})


def escalated_jobs(fleet: RunningFleet, prompts: list[str]) -> list[TaskResult]:
    task_ids = [fleet.client.submit({"prompt": p, "tier": "mini", "kind": "drill"}) for p in prompts]
    results = [fleet.client.result(t, timeout=30) for t in task_ids]
    assert [r.status for r in results] == ["escalated"] * len(prompts)
    return results


def cli_json(args: list[str], fleet: RunningFleet, code: int = 0) -> Any:
    done = run([*args, "--json"], fleet.env())
    assert done.returncode == code, (done.stdout, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_whole_lifecycle_through_the_cli(clean_fleet: RunningFleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given three jobs that no model could answer
    fail_every_model(clean_fleet)
    first, second, third = escalated_jobs(
        clean_fleet,
        ["Extract the order id: 'Order #A-1234'", "Summarise ticket 4411", "Translate 'hi' to French"],
    )
    env = clean_fleet.env()

    # When people list them, they see each with its task, state, tier and reason
    listed = cli_json(["escalations", "list", "--state", "open"], clean_fleet)
    assert {e["task_id"] for e in listed} == {first.task_id, second.task_id, third.task_id}
    assert all(e["state"] == "open" and e["tier"] == "mini" and e["reason"] for e in listed)
    shown = cli_json(["escalations", "show", str(first.escalation_id)], clean_fleet)
    assert shown["request"]["prompt"].startswith("Extract") and shown["routing"]["tier"] == "mini"
    assert shown["attempts"] and {a["http_status"] for a in shown["attempts"]} == {400}
    human = run(["escalations", "show", str(first.escalation_id)], env)
    assert "attempts" in human.stdout and "history" in human.stdout and "bad_request" in human.stdout

    # And a producer waits for the first one's answer with `fleet result --until-answered`
    waiting = subprocess.Popen(
        [*FLEET, "result", first.task_id, "--wait", "60", "--until-answered", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # When alice claims it, bob cannot take it
        claimed = cli_json(["escalations", "claim", str(first.escalation_id), "--by", "alice"], clean_fleet)
        assert claimed["state"] == "claimed" and claimed["assignee"] == "alice"
        refused = run(["escalations", "claim", str(first.escalation_id), "--by", "bob"], env)
        assert refused.returncode == 7
        assert "claimed by alice since" in " ".join(refused.stderr.split())
        assert waiting.poll() is None, "an escalated job is not answered yet"

        # When alice resolves it from a file
        answer = tmp_path / "answer.txt"
        answer.write_text("The order id is A-1234.")
        resolved = cli_json(
            [
                "escalations",
                "resolve",
                str(first.escalation_id),
                "--answer-file",
                str(answer),
                "--by",
                "alice",
            ],
            clean_fleet,
        )
        assert resolved["state"] == "resolved"
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    # Then the waiting producer receives her answer, as the task's result
    got = json.loads(out.strip().splitlines()[-1])
    assert waiting.returncode == 0, err
    assert got["status"] == "completed" and got["answer"] == "The order id is A-1234."
    assert got["resolved_by"] == "human" and got["resolver"] == "alice"
    assert got["escalation_id"] == first.escalation_id

    # And a resolved escalation cannot be resolved again
    again = run(["escalations", "resolve", str(first.escalation_id), "--answer", "x", "--by", "bob"], env)
    assert again.returncode == 7 and "already resolved by alice" in " ".join(again.stderr.split())

    # When the second is discarded, its producer learns why
    cli_json(["escalations", "discard", str(second.escalation_id), "--reason", "duplicate", "--by", "bob"],
             clean_fleet)  # fmt: skip
    discarded = clean_fleet.client.result(second.task_id, timeout=5)
    assert discarded.status == "discarded" and discarded.reason == "duplicate" and discarded.resolver == "bob"

    # When the provider recovers and the third is retried on the standard tier
    clean_fleet.mock_config(faults_by_model={})
    cli_json(
        ["escalations", "retry", str(third.escalation_id), "--tier", "standard", "--by", "carol"], clean_fleet
    )
    retried = clean_fleet.client.result(third.task_id, timeout=30, until_answered=True)
    # Then a model answers it, under the same task id, on the tier people chose
    assert retried.status == "completed" and retried.resolved_by == "model"
    assert retried.tier == "standard" and retried.routing is not None
    assert retried.routing.classifier == "human"
    assert retried.routing.reasons == [
        f"retried on tier standard by carol from escalation {third.escalation_id}"
    ]

    # And the stats count what happened
    stats = cli_json(["escalations", "stats"], clean_fleet)
    assert stats["by_state"] == {"open": 0, "claimed": 0, "resolved": 1, "retried": 1, "discarded": 1}
    assert stats["by_tier"]["mini"]["resolved"] == 1 and stats["by_reason"]
    assert stats["oldest_open_id"] is None


def test_unknown_escalation_and_missing_answer_are_clear_errors(clean_fleet: RunningFleet) -> None:
    missing = run(["escalations", "claim", "nope", "--by", "alice", "--json"], clean_fleet.env())
    assert missing.returncode == 8
    assert json.loads(missing.stdout)["error"]["code"] == "escalation_not_found"
    no_answer = run(["escalations", "resolve", "nope", "--by", "alice"], clean_fleet.env())
    assert no_answer.returncode == 1 and "--answer" in " ".join(no_answer.stderr.split())
