"""Verbs for people: ``fleet escalations list|show|claim|release|resolve|retry|discard|stats``;
``fleet api`` (the HTTP API and the inbox page)."""

from __future__ import annotations

import getpass
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich import box
from rich.table import Table

from fleet.cli.common import err_console, handle_errors, out_console, print_json, settings_for, since_window
from fleet.errors import EscalationError
from fleet.escalations import STATES, EscalationRecord, parse_state
from fleet.models import Tier

if TYPE_CHECKING:
    from fleet.inbox import Filter, Inbox, Redrive

__all__ = ["api", "escalations_app"]

escalations_app = typer.Typer(
    help="Work the escalation inbox: what no model could do, waiting for a person.", no_args_is_help=True
)

_STATE_HELP = f"Only this state: {', '.join(STATES)}."


def _default_name() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return ""


ByOption = Annotated[
    str | None, typer.Option("--by", help="Your name, kept in the history (default: $USER).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _inbox() -> Inbox:
    from fleet.inbox import Inbox  # deferred: imports Celery

    return Inbox(settings_for())


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _prompt(record: EscalationRecord, width: int = 60) -> str:
    request = record.request
    text = request.get("prompt") if isinstance(request, dict) else request
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


#: What ``list --json`` prints of each record, in this order.
_SUMMARY = ("id", "task_id", "state", "tier", "reason", "kind", "assignee", "created_at", "retry_of")


def _summary(record: EscalationRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json", include=set(_SUMMARY))
    return {k: data[k] for k in _SUMMARY}


@escalations_app.command("list")
@handle_errors
def list_(
    state: Annotated[str | None, typer.Option(help=_STATE_HELP)] = None,
    tier: Annotated[Tier | None, typer.Option(help="Only this tier.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List escalations, oldest first: id, state, tier, reason, age, assignee and the prompt's start.

    JSON: a list of objects with id, task_id, state, tier, reason, kind, assignee, created_at, retry_of.

    Example: fleet escalations list --state open --tier full
    """
    wanted = parse_state(state) if state is not None else None
    inbox = _inbox()
    try:
        records = inbox.list(state=wanted, tier=tier)
    finally:
        inbox.close()
    if as_json:
        print_json([_summary(r) for r in records])
        return
    # Ids, states and tiers stay whole; the prompt is shown when the terminal has room for it.
    table = Table(title="escalations", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    widths = {"id": 16, "state": 7, "tier": 8, "reason": 12, "age": 6, "assignee": 8}
    for name, width in widths.items():
        table.add_column(name, no_wrap=True, min_width=width)
    room = out_console.width - 90
    if room >= 12:
        table.add_column("prompt", no_wrap=True, overflow="ellipsis")
    for r in records:
        row = [
            r.id, r.state, str(r.tier or "-"), str(r.reason), _age(r.created_at), str(r.assignee or "-"),
        ]  # fmt: skip
        table.add_row(*row, *([_prompt(r, room)] if room >= 12 else []))
    if records:
        out_console.print(table)
    else:
        out_console.print("no escalations" + (f" in state {state}" if state else ""))


def _show_record(record: EscalationRecord) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for label, value in (
        ("id", record.id),
        ("task", record.task_id),
        ("state", record.state + (f" (by {record.assignee})" if record.assignee else "")),
        ("tier", record.tier or "-"),
        ("reason", record.reason),
        ("detail", record.detail),
        ("kind", record.kind or "-"),
        ("created", f"{_when(record.created_at)} UTC ({_age(record.created_at)} ago)"),
        ("notified", _when(record.notified_at) if record.notified_at else "no"),
        ("retry of", record.retry_of or ""),
        ("followed by", record.followed_by or ""),
        ("trace", record.trace_id or ""),
    ):
        if value:
            table.add_row(label, str(value))
    out_console.print(table)
    request = record.request
    out_console.rule("request")
    if isinstance(request, dict):
        out_console.print(str(request.get("prompt", "")), markup=False, highlight=False)
        rest = {k: v for k, v in request.items() if k != "prompt"}
        if rest:
            out_console.print(rest, markup=False)
    else:
        out_console.print(str(request), markup=False, highlight=False)
    routing = record.routing
    if routing:
        score = f", score {routing.score}" if routing.score is not None else ""
        out_console.rule(f"routing: {routing.tier} (by {routing.classifier}{score})")
        for reason in routing.reasons:
            out_console.print(f"· {reason}", markup=False, highlight=False)
    attempts = Table(title="attempts")
    for name in ("#", "link", "outcome", "HTTP", "latency", "cost"):
        right = name in ("#", "latency", "cost")
        attempts.add_column(name, no_wrap=True, justify="right" if right else "left")
    attempts.add_column("error", no_wrap=True, overflow="ellipsis")
    for i, a in enumerate(record.attempts, 1):
        attempts.add_row(
            str(i), a.link, a.outcome, str(a.http_status or "-"), f"{a.latency_ms:.0f} ms",
            f"${a.cost_usd:.6f}", (a.error or "")[:80],
        )  # fmt: skip
    out_console.print(attempts)
    history = Table("at (UTC)", "state", "by", "note", title="history")
    for h in record.history:
        history.add_row(_when(h.at), h.state, h.by, h.note or "")
    out_console.print(history)
    resolution = record.resolution
    if resolution is not None and resolution.answer is not None:
        out_console.rule("answer")
        out_console.print(resolution.answer, markup=False, highlight=False)


@escalations_app.command("show")
@handle_errors
def show(
    escalation_id: Annotated[str, typer.Argument(help="The escalation id (from list).")],
    as_json: JsonOption = False,
) -> None:
    """Show one escalation: request, routing, every attempt, and who did what.

    Attempts show link, outcome, HTTP status, latency, cost and error.

    Example: fleet escalations show 9c1e4b7a2f3d5e60
    """
    inbox = _inbox()
    try:
        record = inbox.get(escalation_id)
    finally:
        inbox.close()
    if as_json:
        print_json(record.model_dump(mode="json"))
    else:
        _show_record(record)


def _done(record: EscalationRecord, as_json: bool, line: str) -> None:
    if as_json:
        print_json(record.model_dump(mode="json"))
    else:
        out_console.print(line, highlight=False)


@escalations_app.command("claim")
@handle_errors
def claim(
    escalation_id: Annotated[str, typer.Argument(help="The escalation id.")],
    by: ByOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take an open escalation; until you release it, only you can resolve, retry or discard it.

    Example: fleet escalations claim 9c1e4b7a2f3d5e60 --by alice
    """
    inbox = _inbox()
    try:
        record = inbox.claim(escalation_id, by or _default_name())
    finally:
        inbox.close()
    _done(record, as_json, f"claimed {record.id} (by {record.assignee})")


@escalations_app.command("release")
@handle_errors
def release(
    escalation_id: Annotated[str, typer.Argument(help="The escalation id.")],
    by: ByOption = None,
    force: Annotated[bool, typer.Option("--force", help="Release a claim someone else holds.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Give a claimed escalation back to the open pile.

    Example: fleet escalations release 9c1e4b7a2f3d5e60 --by alice
    """
    inbox = _inbox()
    try:
        record = inbox.release(escalation_id, by or _default_name(), force=force)
    finally:
        inbox.close()
    _done(record, as_json, f"released {record.id}: open again")


@escalations_app.command("resolve")
@handle_errors
def resolve(
    escalation_id: Annotated[str, typer.Argument(help="The escalation id.")],
    answer: Annotated[str | None, typer.Option(help="The answer the producer receives.")] = None,
    answer_file: Annotated[
        Path | None, typer.Option("--answer-file", help="Read the answer from a file ('-': stdin).")
    ] = None,
    by: ByOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer an escalation yourself: the answer becomes the task's result (resolved_by: human).

    Example: fleet escalations resolve 9c1e4b7a2f3d5e60 --answer "Order A-1234" --by alice
    """
    if (answer is None) == (answer_file is None):
        raise EscalationError("give exactly one of --answer TEXT or --answer-file FILE")
    if answer_file is not None:
        try:
            answer = sys.stdin.read() if str(answer_file) == "-" else answer_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EscalationError(f"cannot read --answer-file {answer_file}: {exc}") from None
    assert answer is not None
    inbox = _inbox()
    try:
        record = inbox.resolve(escalation_id, answer, by or _default_name())
    finally:
        inbox.close()
    _done(record, as_json, f"resolved {record.id}: task {record.task_id} has its answer")


WhereOption = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="In bulk: open escalations whose KEY is VALUE (reason, tier, kind, provider); repeatable.",
    ),
]
SinceOption = Annotated[str | None, typer.Option(help="In bulk: created within this long (30m, 1h, 2d).")]
YesOption = Annotated[bool, typer.Option("--yes", help="In bulk: go ahead without asking.")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="In bulk: count what would move; move nothing.")
]


def _filter(where: list[str] | None, since: str | None) -> Filter | None:
    """The bulk filter of ``--where``/``--since``, or None when neither is given."""
    from fleet.inbox import Filter

    if not where and since is None:
        return None
    pairs: dict[str, str] = {}
    for item in where or []:
        key, sep, value = item.partition("=")
        if not sep or key not in Filter.KEYS or not value:
            raise EscalationError(
                f"--where {item!r}: expected KEY=VALUE with KEY one of {', '.join(Filter.KEYS)}"
            )
        pairs[key] = value
    return Filter(**pairs, since_s=since_window(since) if since is not None else None)


def _bulk(
    action: Literal["retry", "discard"], where: Filter, by: str, yes: bool, dry_run: bool, as_json: bool,
    **kw: Any,
) -> None:  # fmt: skip
    """Retry or discard every open escalation ``where`` matches, paced, after a confirmation."""
    inbox = _inbox()
    try:
        count = len(inbox.matching(where))
        if dry_run or count == 0:
            report = inbox.redrive(action, where, by, dry_run=True, **kw)
        else:
            if not yes and not typer.confirm(f"{action} {count} open escalation(s)?", err=True):
                raise typer.Exit(1)
            per_s = inbox.settings.escalation.redrive_per_s

            def progress(r: Redrive) -> None:
                done = len(r.moved) + len(r.left)
                if not as_json and (done % 25 == 0 or done == r.matched):
                    err_console.print(f"{action}: {done}/{r.matched} ({per_s:g}/s)")

            report = inbox.redrive(action, where, by, on_progress=progress, **kw)
    finally:
        inbox.close()
    if as_json:
        print_json(report.to_dict())
        return
    moved = f"would move {report.matched}" if report.dry_run else f"moved {len(report.moved)}"
    out_console.print(f"{action}: {report.matched} matched, {moved}")
    for esc_id, why in report.left.items():
        out_console.print(f"  left {esc_id}: {why}", highlight=False)


@escalations_app.command("retry")
@handle_errors
def retry(
    escalation_id: Annotated[
        str | None, typer.Argument(help="The escalation id (or --where/--since).")
    ] = None,
    tier: Annotated[Tier | None, typer.Option(help="Run it on this tier (default: route it again).")] = None,
    by: ByOption = None,
    where: WhereOption = None,
    since: SinceOption = None,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Enqueue the original request again under the same task id, linked to this escalation. In bulk
    (--where, --since): every open escalation that matches, paced at escalation.redrive_per_s, after
    a confirmation (--yes skips it; --dry-run only counts).

    Example: fleet escalations retry 9c1e4b7a2f3d5e60 --tier full
    Example: fleet escalations retry --where reason=server_error --since 1h --yes
    """
    bulk = _filter(where, since)
    if bulk is not None:
        if escalation_id is not None:
            raise EscalationError("give an escalation id or --where/--since, not both")
        pinned = tier.value if tier else None
        _bulk("retry", bulk, by or _default_name(), yes, dry_run, as_json, tier=pinned)
        return
    if escalation_id is None:
        raise EscalationError("give an escalation id, or --where/--since for a bulk retry")
    inbox = _inbox()
    try:
        record = inbox.retry(escalation_id, by or _default_name(), tier=tier.value if tier else None)
    finally:
        inbox.close()
    route = f"on tier {tier.value}" if tier else "through the router"
    _done(record, as_json, f"retried {record.id}: task {record.task_id} enqueued again {route}")


@escalations_app.command("discard")
@handle_errors
def discard(
    escalation_id: Annotated[
        str | None, typer.Argument(help="The escalation id (or --where/--since).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; the producer receives it as the task's reason.")] = "",
    by: ByOption = None,
    where: WhereOption = None,
    since: SinceOption = None,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Close an escalation without an answer; the task's result says discarded, with the reason. In
    bulk (--where, --since): every open escalation that matches, paced, after a confirmation.

    Example: fleet escalations discard 9c1e4b7a2f3d5e60 --reason "duplicate of ticket 4411"
    Example: fleet escalations discard --where kind=test.spam --reason spam --yes
    """
    bulk = _filter(where, since)
    if bulk is not None:
        if escalation_id is not None:
            raise EscalationError("give an escalation id or --where/--since, not both")
        _bulk("discard", bulk, by or _default_name(), yes, dry_run, as_json, reason=reason)
        return
    if escalation_id is None:
        raise EscalationError("give an escalation id, or --where/--since for a bulk discard")
    inbox = _inbox()
    try:
        record = inbox.discard(escalation_id, reason, by or _default_name())
    finally:
        inbox.close()
    _done(record, as_json, f"discarded {record.id}")


@escalations_app.command("stats")
@handle_errors
def stats(as_json: JsonOption = False) -> None:
    """Counts by state, by tier and by reason (split by state), and the age of the oldest open one.

    Example: fleet escalations stats --json
    """
    inbox = _inbox()
    try:
        data = inbox.stats()
    finally:
        inbox.close()
    if as_json:
        print_json(data.model_dump(mode="json"))
        return
    out_console.print(
        f"{data.total} escalations: " + ", ".join(f"{n} {s}" for s, n in data.by_state.items()),
        highlight=False,
    )
    for title, rows in (("tier", data.by_tier), ("reason", data.by_reason)):
        table = Table(title, *STATES, title=f"by {title}")
        for name, counts in rows.items():
            table.add_row(name, *(str(counts.get(s, 0)) for s in STATES))
        out_console.print(table)
    if data.oldest_open_id and data.oldest_open_age_s is not None:
        out_console.print(
            f"oldest open: {data.oldest_open_id}, waiting {_age(time.time() - data.oldest_open_age_s)}"
        )


@handle_errors
def api(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default from config).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from config: 8080).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the inbox page at /inbox.

    With the variable named by [api] token_env (FLEET_API_TOKEN) set, every call needs
    "Authorization: Bearer <token>"; without it the API only listens on loopback.

    Example: FLEET_API_TOKEN=$(openssl rand -hex 24) fleet api --host 0.0.0.0 --port 8080
    """
    import uvicorn

    from fleet.api import check_bind, create_api

    settings = settings_for()
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    token = os.environ.get(settings.api.token_env) or None
    check_bind(host, token, settings)
    app = create_api(settings, token=token)
    auth = "bearer token required" if token else "no auth (loopback only)"
    err_console.print(
        f"[bold green]fleet api[/] on http://{host}:{port} ({auth}); inbox at /inbox, docs at /docs"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
