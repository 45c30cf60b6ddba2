"""What a pipeline saves: ``extract_reason`` against the same documents answered by the full tier alone.

N long meeting-notes documents (default 12, about 10,000-20,000 characters each, generated from
``--seed``) run twice on one fleet (embedded broker, the mock provider over HTTP, a pool per queue):

- arm ``pipeline``: ``{"prompt": doc, "pipeline": "extract_reason"}``: mini extracts the facts as
  JSON, full reasons over the extraction only (config/pipelines.toml);
- arm ``full``: ``{"prompt": doc, "tier": "full"}``: the whole document to the full tier.

Per arm: jobs, completed, total and mean cost_usd, mean input tokens sent to the full tier, and
SIMULATED quality: the mock provider's hidden truth (``POST /_mock/truth``, fleet/providers/
mock_quality.py) on each final answer and, for the pipeline, on every step's answer. The fleet runs
with the quality simulation on and the quality gate OFF, so the arms compare the pipeline alone (no
judge, upgrade or polish on either side). The last stdout line is one JSON object.

Usage: python bench/pipelines.py [--json] [--docs 12] [--seed 0] [--timeout 120]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from fleet.models import TaskResult, Tier
from fleet.producer import Client
from fleet.settings import load_settings
from fleet.supervisor import FleetOptions, Supervisor

PIPELINE = "extract_reason"
#: Environment of the fleet's processes (and of this one's settings): quality simulated, gate off.
FLEET_ENV = {"FLEET_MOCK__SIMULATE_QUALITY": "true", "FLEET_QUALITY__ENABLED": "false"}
QUALITY_NOTE = (
    "SIMULATED by the mock provider (fleet/providers/mock_quality.py): whether an answer is flawed is "
    "the mock's hidden truth, drawn from each call's own prompt and the model's capability. The "
    "simulation does not model facts lost in the extraction, and the mock gives structured (JSON "
    "schema) answers unsimulated, so the extract step has no truth: 'every step sound' covers the "
    "steps with truth. Treat the quality figures as a check of the harness, not of the pipeline."
)

# --- documents --------------------------------------------------------------------------------------

_PEOPLE = [
    "Priya Raman", "Tomasz Nowak", "Aisha Bello", "Marcus Feld", "Jenna Ortiz", "Hiro Tanaka",
    "Sam Whitaker", "Leila Haddad", "Rafael Costa", "Mei Lin", "Oluwaseun Adeyemi", "Greta Lindqvist",
    "Daniel Brooks", "Victor Hale", "Ines Carvalho", "Kofi Mensah", "Ruth Abramowitz", "Yuki Sato",
]  # fmt: skip
_TEAMS = ["platform", "payments", "data", "security", "mobile", "search", "support", "finance", "orders"]
_SYSTEMS = [
    "checkout-api", "orders-db", "search-api", "the Kafka cluster", "the CI runners", "payouts-service",
    "the identity provider", "the CDN", "the reporting warehouse", "notification-service", "the API gateway",
]  # fmt: skip
_TOPICS = [
    ("migration of {sys} to the new cluster", "the cut-over", "a rollback plan was never rehearsed"),
    ("cost overrun on {sys}", "the budget", "finance wants a commitment before the quarterly review"),
    ("latency regression in {sys}", "the p99 target", "the load test did not cover the peak pattern"),
    ("incident follow-ups for {sys}", "the open actions", "two follow-ups still have no owner"),
    ("vendor contract renewal for {sys}", "the renewal terms", "legal has not reviewed the data clause"),
    ("security review of {sys}", "the findings", "a temporary firewall rule may still be open"),
    ("capacity planning for {sys}", "the growth forecast", "storage runs out before the new hardware"),
    ("on-call load on {sys}", "the rota", "three alerts have no runbook"),
]  # fmt: skip
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "September", "October"]
_FILLER = [
    "The discussion went back and forth on the trade-offs; several people wanted more data first.",
    "Someone pointed out that the same question came up last quarter without a conclusion.",
    "There was general agreement on the direction but not on the timing or on who pays for it.",
    "The numbers quoted came from the dashboard on the morning of the meeting and may have moved.",
    "A side conversation about naming conventions was parked for another meeting.",
    "It was noted that the documentation for this area is out of date and partly wrong.",
]  # fmt: skip


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} 2025"


def _section(rng: random.Random, number: int, people: list[str]) -> str:
    """One agenda item: background, discussion, a decision, actions with and without owners or dates."""
    sysname = rng.choice(_SYSTEMS)
    topic, subject, risk = rng.choice(_TOPICS)
    lead, other, third = rng.sample(people, 3)
    pct, amount = rng.randint(3, 45), rng.randint(8, 400)
    title = topic.format(sys=sysname)
    lines = [
        f"{number}. {title[0].upper()}{title[1:]}",
        "",
        f"{lead} ({rng.choice(_TEAMS)}) summarised the state of {sysname}: {subject} moved by {pct} percent "
        f"since the last review, and about {amount} k EUR of work is at stake. {other} said that {risk}; "
        f"{third} was not sure this was still true and asked for it to be checked before anything else.",
        " ".join(rng.sample(_FILLER, 3)),
        f"{other} proposed to split the work in two phases, the first by {_date(rng)}, the second after "
        f"the freeze that ends on {_date(rng)}. {lead} preferred one phase but accepted the split.",
        f"Decision: {subject} for {sysname} goes ahead in two phases; {lead} announces it to the "
        f"{rng.choice(_TEAMS)} team.",
        f"Action: {other} writes the plan for phase one by {_date(rng)}.",
        f"Action: {third} checks whether {risk.split(';')[0]}. No date was agreed.",
        f"Action: someone from {rng.choice(_TEAMS)} reviews the cost estimate; owner not decided.",
        " ".join(rng.sample(_FILLER, 2)),
        "",
    ]
    return "\n".join(lines)


def make_document(seed: int, index: int) -> str:
    """A meeting-notes document of 10,000-20,000 characters, the same for the same seed and index."""
    rng = random.Random(f"{seed}:{index}")
    target = rng.randint(10_000, 20_000)
    people = rng.sample(_PEOPLE, 7)
    head = (
        f"{rng.choice(_TEAMS).capitalize()} review meeting {index + 1} - {_date(rng)}, 10:00-12:00\n\n"
        f"Attendees: {', '.join(people)}. Notes: {people[-1]}.\n\n"
    )
    parts, number = [head], 1
    while sum(map(len, parts)) < target - 400:
        section = _section(rng, number, people)
        if sum(map(len, parts)) + len(section) > target:
            break
        parts.append(section)
        number += 1
    parts.append(f"Next meeting: {_date(rng)}, same time. {rng.choice(people)} chairs.\n")
    return "".join(parts)


# --- measuring --------------------------------------------------------------------------------------


def _wait(client: Client, ids: list[str], timeout: float) -> dict[str, TaskResult]:
    results: dict[str, TaskResult] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(ids) and time.monotonic() < deadline:
        results.update(client.peek([i for i in ids if i not in results]))
        time.sleep(0.2)
    return results


def _truth(mock_url: str, answers: list[str]) -> list[dict[str, Any]]:
    """The mock's SIMULATED truth of each answer: {"known", "flawed", "model"}."""
    body = {"answers": answers, "prompts": [], "model": ""}
    out = httpx.post(f"{mock_url.rstrip('/')}/_mock/truth", json=body, timeout=60).json()
    return list(out["answers"])


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _mean(values: list[float], digits: int = 8) -> float:
    return round(statistics.fmean(values), digits) if values else 0.0


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _full_input(res: TaskResult) -> int:
    """Input tokens the full tier read for this result (a pipeline: its steps on full)."""
    if res.pipeline is None:
        return res.input_tokens if res.tier is Tier.FULL else 0
    return sum(s.input_tokens for s in res.steps if s.tier is Tier.FULL)


def _arm(ids: list[str], results: dict[str, TaskResult]) -> dict[str, Any]:
    done = [results[i] for i in ids if i in results]
    completed = [r for r in done if r.status == "completed"]
    total = sum(r.cost_usd for r in done)
    return {
        "jobs": len(ids),
        "completed": len(completed),
        "escalated": len(done) - len(completed),
        "lost": len(ids) - len(done),
        "cost_usd": round(total, 6),
        "mean_cost_usd": _mean([r.cost_usd for r in completed]),
        "mean_input_tokens_full": _mean([_full_input(r) for r in completed], 1),
        "mean_input_tokens": _mean([r.input_tokens for r in completed], 1),
    }


def _quality(mock_url: str, full: list[TaskResult], pipes: list[TaskResult]) -> dict[str, Any]:
    """SIMULATED quality of each arm: final answers, and every step of each pipeline."""
    full_truth = _truth(mock_url, [r.answer or "" for r in full])
    final_truth = _truth(mock_url, [r.answer or "" for r in pipes])
    outputs = [(n, s.step, s.output or "") for n, r in enumerate(pipes) for s in r.steps]
    step_truth = _truth(mock_url, [o for _, _, o in outputs])
    by_pipe: dict[int, list[bool]] = {}
    known_by_step: dict[str, dict[str, int]] = {}
    for (n, step, _), t in zip(outputs, step_truth, strict=True):
        row = known_by_step.setdefault(step, {"answers": 0, "with_truth": 0, "sound": 0})
        row["answers"] += 1
        if t.get("known"):
            row["with_truth"] += 1
            row["sound"] += 0 if t["flawed"] else 1
            by_pipe.setdefault(n, []).append(not t["flawed"])
    return {
        "full": {
            "final_answer_sound": _share([not t["flawed"] for t in full_truth if t.get("known")]),
            "answers_with_truth": sum(1 for t in full_truth if t.get("known")),
        },
        "pipeline": {
            "final_answer_sound": _share([not t["flawed"] for t in final_truth if t.get("known")]),
            "answers_with_truth": sum(1 for t in final_truth if t.get("known")),
            "every_step_sound": _share([all(flags) for flags in by_pipe.values()]),
            "by_step": known_by_step,
        },
    }


def run(docs: list[str], timeout: float, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-pipelines-") as tmp:
        env = {**os.environ, **FLEET_ENV, "FLEET_STATE_DIR": tmp}
        env.pop("FLEET_REDIS_URL", None)  # an embedded broker of our own
        settings = load_settings(profile="demo", env=env, overrides={"mock.enabled": True})
        options = FleetOptions(
            queues=("router", "mini", "full", "escalations"), flower=False, publish_state=False,
            broker_dir=Path(tmp) / "broker", log_dir=Path(tmp) / "logs", shutdown_grace_s=10, env=FLEET_ENV,
        )  # fmt: skip
        began = time.monotonic()
        with Supervisor(settings, options, on_event=lambda m: log(f"· {m}")) as sup:
            client = Client(settings, redis_url=sup.redis_url)
            try:
                started = time.monotonic()
                pipe_ids = [client.submit({"prompt": d, "pipeline": PIPELINE}) for d in docs]
                full_ids = [client.submit({"prompt": d, "tier": "full"}) for d in docs]
                results = _wait(client, pipe_ids + full_ids, timeout)
                seconds = time.monotonic() - started
                log(f"{len(results)} of {2 * len(docs)} jobs final in {seconds:.1f} s")
                pipes = [results[i] for i in pipe_ids if i in results and results[i].status == "completed"]
                full = [results[i] for i in full_ids if i in results and results[i].status == "completed"]
                quality = _quality(sup.mock_url, full, pipes)
            finally:
                client.close()
        pipeline_arm = {**_arm(pipe_ids, results), **quality["pipeline"]}
        pipeline_arm["mean_cost_by_step_usd"] = {
            step: _mean([s.cost_usd for r in pipes for s in r.steps if s.step == step])
            for step in dict.fromkeys(s.step for r in pipes for s in r.steps)
        }
        full_arm = {**_arm(full_ids, results), **quality["full"]}
        return {
            "pipeline_arm": pipeline_arm,
            "full_arm": full_arm,
            "jobs_seconds": round(seconds, 1),
            "total_seconds": round(time.monotonic() - began, 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--docs", type=int, default=12, help="documents (jobs per arm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated documents")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every job")
    args = parser.parse_args()

    def log(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    docs = [make_document(args.seed, i) for i in range(args.docs)]
    measured = run(docs, args.timeout, log)
    pipe, full = measured["pipeline_arm"], measured["full_arm"]
    sizes = [len(d) for d in docs]
    out = {
        "pipeline": PIPELINE,
        "docs": args.docs,
        "seed": args.seed,
        "doc_chars": {"min": min(sizes), "mean": round(statistics.fmean(sizes)), "max": max(sizes)},
        "arms": {"pipeline": pipe, "full": full},
        "cost_ratio_pipeline_vs_full": _ratio(pipe["cost_usd"], full["cost_usd"]),
        "mean_cost_ratio_pipeline_vs_full": _ratio(pipe["mean_cost_usd"], full["mean_cost_usd"]),
        "full_input_tokens_ratio": _ratio(pipe["mean_input_tokens_full"], full["mean_input_tokens_full"]),
        "cost_note": "prices of config/fleet.toml; token counts of the mock provider, whose answer to "
        "the extraction's JSON schema is a minimal instance of it: the reasoning step reads far fewer "
        "tokens than it would after a real model's extraction, so the ratio is a lower bound",
        "quality_gate": False,
        "quality_gate_note": "the quality gate is off (FLEET_QUALITY__ENABLED=false): the arms compare the "
        "pipeline alone, with no judge, upgrade or polish on either side",
        "quality_simulated": True,
        "quality_note": QUALITY_NOTE,
        "lost": pipe["lost"] + full["lost"],
        "seconds": measured["total_seconds"],
        "jobs_seconds": measured["jobs_seconds"],
    }
    if not args.json:
        print(
            f"{PIPELINE}: ${pipe['cost_usd']:.4f} for {pipe['completed']} docs vs full alone "
            f"${full['cost_usd']:.4f} (ratio {out['cost_ratio_pipeline_vs_full']}); "
            f"full reads {pipe['mean_input_tokens_full']:.0f} vs {full['mean_input_tokens_full']:.0f} tokens"
        )
    print(json.dumps(out))
    return 0 if out["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
