"""Verbs for jobs: submit, result."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fleet.cli.common import EXIT_FAILURE, EXIT_OK, handle_errors, out_console, print_json, settings_for
from fleet.errors import InvalidRequest
from fleet.models import Complexity, TaskResult, Tier

__all__ = ["result", "submit"]


def _read_text(source: str) -> str:
    return sys.stdin.read() if source == "-" else Path(source).read_text()


def _request_file(source: str) -> dict[str, Any]:
    """A whole TaskRequest from a JSON file (``-``: stdin). Raises InvalidRequest: not JSON."""
    try:
        request: dict[str, Any] = json.loads(_read_text(source))
    except ValueError as exc:
        raise InvalidRequest([f"--request is not JSON: {exc}"]) from None
    return request


def _prompt(prompt: str | None) -> str:
    """The prompt argument, or stdin for '-' or none. Raises InvalidRequest: no prompt anywhere."""
    if prompt is None or prompt == "-":
        if sys.stdin.isatty() and prompt is None:
            raise InvalidRequest(["prompt: give it as an argument or on stdin"])
        return sys.stdin.read()
    return prompt


def _given(**fields: Any) -> dict[str, Any]:
    """The options that were given (not None)."""
    return {key: value for key, value in fields.items() if value is not None}


def _pairs(items: list[str]) -> dict[str, str]:
    """``--meta KEY=VALUE`` options. Raises InvalidRequest: one is not KEY=VALUE."""
    pairs = [m.partition("=") for m in items]
    bad = [m for m, (_, sep, _) in zip(items, pairs, strict=True) if not sep]
    if bad:
        raise InvalidRequest([f"--meta {b!r}: expected KEY=VALUE" for b in bad])
    return {k: v for k, _, v in pairs}


@handle_errors
def submit(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt; '-' or nothing reads it from stdin.")
    ] = None,
    tier: Annotated[Tier | None, typer.Option(help="Pin the job to a tier (skips the router).")] = None,
    kind: Annotated[str | None, typer.Option(help="Label of the job type, for cost reports.")] = None,
    pipeline: Annotated[
        str | None, typer.Option(help="Run the prompt through this pipeline of config/pipelines.toml.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    complexity: Annotated[Complexity | None, typer.Option(help="Hint: low, medium or high.")] = None,
    requires_reasoning: Annotated[
        bool, typer.Option("--requires-reasoning", help="Hint: send to full.")
    ] = False,
    safety_critical: Annotated[bool, typer.Option("--safety-critical", help="Hint: send to full.")] = False,
    latency_budget_ms: Annotated[int | None, typer.Option(help="Hint: latency budget in ms.")] = None,
    deadline_s: Annotated[
        int | None,
        typer.Option(
            help="Hint: the answer is wanted within S seconds; long enough, it goes to a provider batch."
        ),
    ] = None,
    files: Annotated[list[str] | None, typer.Option("--file", help="Hint: a file the job touches.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Upper bound of the answer's tokens.")] = None,
    priority: Annotated[
        int | None, typer.Option(min=0, max=9, help="0 (default) to 9: the most urgent go first in its tier.")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same task: enqueued once.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata (repeatable).")
    ] = None,
    request_file: Annotated[
        str | None, typer.Option("--request", help="A whole TaskRequest as JSON from a file ('-': stdin).")
    ] = None,
    wait: Annotated[float | None, typer.Option(help="Wait up to S seconds for the result.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"task_id": ...} as JSON.')] = False,
) -> None:
    """Validate and enqueue one job; print its task id.

    Example: fleet submit "Add a docstring to parse_rate()" --kind code.docstring --complexity low

    A pipeline: fleet submit --pipeline extract_reason - < meeting-notes.txt

    Ahead of its tier's backlog: fleet submit "Reply to this customer: ..." --tier fast --priority 9

    Can wait a day (the batch lane, at batch prices): fleet submit "Summarise ..." --deadline-s 86400
    """
    from fleet.producer import Client

    if request_file is not None:
        request = _request_file(request_file)
    else:
        hints = {
            "files": files or [],
            **_given(
                complexity=complexity.value if complexity else None,
                requires_reasoning=requires_reasoning or None,
                safety_critical=safety_critical or None,
                latency_budget_ms=latency_budget_ms,
                deadline_s=deadline_s,
            ),
        }
        request = {
            "prompt": _prompt(prompt),
            "hints": hints,
            **_given(
                tier=tier.value if tier else None, kind=kind, system=system, max_tokens=max_tokens,
                idempotency_key=idempotency_key, pipeline=pipeline, priority=priority,
            ),
        }  # fmt: skip
        if metadata:
            request["metadata"] = _pairs(metadata)
    client = Client(settings_for())
    task_id = client.submit(request)
    if wait is None:
        if as_json:
            print_json({"task_id": task_id})
        else:
            out_console.print(task_id, highlight=False)
        return
    _show(client.result(task_id, timeout=wait), as_json)


def _show(res: TaskResult, as_json: bool) -> None:
    if as_json:
        print_json(res.model_dump(mode="json"))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("task", res.task_id)
    table.add_row("status", res.status + (f" ({res.reason})" if res.reason else ""))
    if res.routing:
        score = f", score {res.routing.score}" if res.routing.score is not None else ""
        table.add_row("tier", f"{res.routing.tier} (by {res.routing.classifier}{score})")
        for reason in res.routing.reasons:
            table.add_row("", f"· {reason}")
    if res.model:
        table.add_row("model", f"{res.provider}:{res.model}")
    table.add_row("tokens", f"{res.input_tokens} in, {res.output_tokens} out")
    table.add_row("cost", f"${res.cost_usd:.6f}")
    if res.latency_ms is not None:
        table.add_row("latency", f"{res.latency_ms:.0f} ms")
    if res.escalation_id:
        table.add_row("escalation", res.escalation_id)
    if res.resolved_by:
        table.add_row("answered by", res.resolved_by + (f" ({res.resolver})" if res.resolver else ""))
    out_console.print(table)
    if res.attempts:
        attempts = Table("#", "link", "outcome", "status", "ms", "tokens", "cost", title="attempts")
        for i, a in enumerate(res.attempts, 1):
            attempts.add_row(
                str(i), a.link, a.outcome, str(a.http_status or ""), f"{a.latency_ms:.0f}",
                f"{a.input_tokens}/{a.output_tokens}", f"${a.cost_usd:.6f}",
            )  # fmt: skip
        out_console.print(attempts)
    if res.steps:
        steps = Table(
            "step", "status", "tier", "model", "tokens", "cost", "output", title=f"pipeline {res.pipeline}"
        )
        for st in res.steps:
            name = st.step if st.index is None else f"{st.step}[{st.index + 1}]"
            output = (st.output or "").replace("\n", " ")
            steps.add_row(
                name, st.status + (" (by a person)" if st.resolved_by == "human" else ""), str(st.tier or ""),
                st.model or "", f"{st.input_tokens}/{st.output_tokens}", f"${st.cost_usd:.6f}",
                output[:80] + ("…" if len(output) > 80 else ""),
            )  # fmt: skip
        out_console.print(steps)
    if res.answer is not None:
        out_console.rule("answer")
        out_console.print(res.answer, highlight=False, markup=False)


@handle_errors
def result(
    task_id: Annotated[str, typer.Argument(help="The task id printed by submit.")],
    wait: Annotated[float | None, typer.Option(help="Wait up to S seconds for a final state.")] = None,
    until_answered: Annotated[
        bool,
        typer.Option(
            "--until-answered", help="With --wait: an escalated job is not final; wait for a person."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the TaskResult as JSON.")] = False,
) -> None:
    """Show a job's result: tier, routing reasons, model, attempts, tokens, cost and the answer (and a
    pipeline's steps: tier, model, tokens, cost and output of each; --json has every output whole).

    Without --wait a job still in flight prints its state and exits 0; with --wait, a job without
    a final state in time exits 5. An id nobody submitted exits 8 at once. With --until-answered,
    an escalated job waits for the person who resolves (or discards) it in the inbox.

    Example: fleet result 3f2a... --wait 600 --until-answered
    """
    from fleet.producer import Client

    client = Client(settings_for())
    if wait is not None:
        _show(client.result(task_id, timeout=wait, until_answered=until_answered), as_json)
        return
    status = client.status(task_id)
    if status.result is not None:
        _show(status.result, as_json)
        return
    if as_json:
        print_json(status.model_dump(mode="json", exclude={"result"}))
    else:
        where = f" on queue {status.queue}" if status.queue else ""
        out_console.print(f"{task_id}: {status.state}{where} (no final state yet)")
    raise typer.Exit(EXIT_OK if status.state != "failed" else EXIT_FAILURE)


@handle_errors
def job(
    task_id: Annotated[str, typer.Argument(help="The task id printed by submit.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JobStatus as JSON.")] = False,
) -> None:
    """Where a job is now: queued (which queue, how long it has waited), routed (the tier and the
    router's reasons), batched (in the batch lane, waiting for a provider batch), running (the worker,
    the chain's first link, the delivery), or its final state (completed, escalated, discarded). An
    id nobody submitted exits 8 at once.

    Example: fleet job 3f2a... --json
    """
    from fleet.producer import Client

    status = Client(settings_for()).status(task_id)
    if as_json:
        print_json({**status.model_dump(mode="json", exclude={"result"}), "waited_s": status.waited_s})
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("task", task_id)
    table.add_row("state", status.state)
    if status.queue:
        table.add_row("queue", status.queue)
    if status.waited_s is not None and status.result is None:
        table.add_row("for", f"{status.waited_s:.1f} s")
    if status.tier:
        table.add_row("tier", str(status.tier))
    for reason in status.reasons:
        table.add_row("", f"· {reason}")
    if status.worker:
        table.add_row("worker", status.worker)
    if status.link:
        table.add_row("link", f"{status.link} (the chain's first; `fleet result` lists every attempt)")
    if status.attempt:
        table.add_row("delivery", str(status.attempt))
    if status.result is not None:
        res = status.result
        table.add_row(
            "result", f"{res.status} on {res.tier or '-'} by {res.model or '-'}, ${res.cost_usd:.6f}"
        )
    out_console.print(table)


@handle_errors
def cancel(
    task_id: Annotated[str, typer.Argument(help="The task id printed by submit.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JobStatus as JSON.")] = False,
) -> None:
    """Cancel a job. Queued: it ends `cancelled` when a worker reaches it, without a model call.
    Running: it stops after its current call, charged only for the calls it made. A pipeline sends no
    further step. A job already final is left as it is; cancelling twice is harmless. An id nobody
    submitted exits 8.

    Example: fleet cancel 3f2a...
    """
    from fleet.producer import Client

    status = Client(settings_for()).cancel(task_id)
    if as_json:
        print_json(status.model_dump(mode="json", exclude={"result"}))
    elif status.result is not None:
        out_console.print(f"{task_id} is already {status.result.status}: nothing to cancel")
    else:
        how = "after its current call" if status.state == "running" else "when a worker reaches it"
        out_console.print(f"{task_id}: cancelled; it stops {how}")
