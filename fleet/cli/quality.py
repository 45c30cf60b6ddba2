"""``fleet quality``: pass rates per kind and tier, what shadow runs on full say of routing down, and
which kinds the router moves up now."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fleet.cli.common import handle_errors, out_console, print_json, settings_for, since_window

__all__ = ["quality"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@handle_errors
def quality(
    since: Annotated[str, typer.Option(help="How far back: 30m, 1h, 2d (units s, m, h, d, w).")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Pass rates of the quality gate's checks per kind and tier, people's answers to failed ones,
    shadow comparisons with the full tier, and the kinds routing moves up because of them.

    Example: fleet quality --since 1d --json
    """
    from fleet.discovery import broker_url, redis_client
    from fleet.quality.feedback import read_rates

    window = since_window(since)
    settings = settings_for()
    client = redis_client(settings, broker_url(settings))
    rates = read_rates(client, window)
    feedback = read_rates(client, settings.quality.feedback.window_s)
    rows = rates.rows()
    moved = []
    for row in feedback.rows():
        why = feedback.move_up(row["tier"], row["kind"], settings.quality.feedback)
        if why is not None:
            moved.append({"tier": row["tier"], "kind": row["kind"], "reason": why})
    data: dict[str, Any] = {"since_s": window, "by_kind_and_tier": rows, "moved_up": moved}
    if as_json:
        print_json(data)
        return
    table = Table(
        "tier", "kind", "judged", "passed", "people", "pass rate", "shadow n", "tier vs full (pass)",
        "tier vs full (mean score)", title=f"quality in the last {since}",
    )  # fmt: skip
    for row in rows:
        shadow = row["shadow"]
        passes = f"{_pct(row.get('shadow_pass_rate'))} vs {_pct(row.get('shadow_full_pass_rate'))}"
        scores = f"{row.get('shadow_mean_score')} vs {row.get('shadow_full_mean_score')}"
        table.add_row(
            row["tier"], row["kind"], str(row["judged"]), str(row["passed"]), str(row["human"]),
            _pct(row["pass_rate"]), str(shadow or "-"), passes if shadow else "-", scores if shadow else "-",
        )  # fmt: skip
    out_console.print(table if rows else f"no quality checks in the last {since}")
    for move in moved:
        out_console.print(f"[yellow]routed up[/]: {move['reason']}", highlight=False)
