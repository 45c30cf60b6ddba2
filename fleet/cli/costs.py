"""``fleet costs``: spend and tokens by tier, model and kind, and the saving against all-full."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fleet.cli.common import handle_errors, out_console, print_json, settings_for, since_window

__all__ = ["costs"]

#: What ``--by`` takes.
_BY = ("all", "tier", "model", "kind", "team", "pipeline")


def _table(title: str, rows: dict[str, dict[str, Any]], *, full: bool) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(title.split()[-1], style="bold")
    for column in ("jobs", "tokens in", "tokens out", "cost"):
        table.add_column(column, justify="right")
    if full:
        table.add_column("if all on full", justify="right")
    for name, row in rows.items():
        cells = [name, str(row["jobs"]), f"{row['input_tokens']:,}", f"{row['output_tokens']:,}"]
        cells.append(f"${row['cost_usd']:.4f}")
        if full:
            cells.append(f"${row['cost_all_full_usd']:.4f}")
        table.add_row(*cells)
    return table


@handle_errors
def costs(
    since: Annotated[str, typer.Option(help="How far back: 30m, 1h, 2d (units s, m, h, d, w).")] = "1h",
    by: Annotated[
        str, typer.Option(help="Which tables: all, tier, model, kind, team or pipeline (--json: all).")
    ] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Spend and tokens by tier, model, kind, and pipeline and step, over a time window, and what
    the same tokens would have cost with every job on the full tier's first model (the saving
    routing makes).

    Read from the per-job cost records the tier workers write (Redis stream fleet:costs). Failed
    calls count where they cost tokens; a job retried by people is charged once per run; a quality
    gate's judge and rewrite calls are charged to their job; shadow runs are a line of their own.

    Example: fleet costs --since 2d --json; spend per team (metadata.team): fleet costs --by team
    """
    from fleet.costs import read_records, report
    from fleet.discovery import broker_url, redis_client

    if by not in _BY:
        raise typer.BadParameter(f"expected one of {', '.join(_BY)}, got {by!r}", param_hint="--by")
    window = since_window(since)
    settings = settings_for()
    client = redis_client(settings, broker_url(settings))
    data = report(read_records(client, window), since_s=window)
    if as_json:
        print_json(data)
        return
    for table in ("tier", "model", "kind", "team"):
        if by in ("all", table) and (table != "team" or by == "team" or set(data["by_team"]) != {"none"}):
            rows = data[f"by_{table}"]
            out_console.print(_table(f"spend in the last {since} by {table}", rows, full=table != "model"))
    for name, row in data["by_pipeline"].items() if by in ("all", "pipeline") else ():
        title = f"pipeline {name}: ${row['cost_usd']:.4f} over {row['jobs']} step jobs, by step"
        out_console.print(_table(title, row["by_step"], full=True))
    statuses = ", ".join(f"{n} {s}" for s, n in data["by_status"].items()) or "no jobs"
    out_console.print(
        f"{data['jobs']} jobs ({statuses}): ${data['cost_usd']:.4f} for "
        f"{data['input_tokens']:,} tokens in, {data['output_tokens']:,} out; all on full: "
        f"${data['cost_all_full_usd']:.4f}; saving ${data['saving_usd']:.4f} "
        f"([bold green]{data['saving_ratio']:.0%}[/])"
    )
    out_console.print(
        f"prompt caches: {data['cached_input_tokens']:,} input tokens read from them "
        f"({data['cache_hit_ratio']:.1%} of input), saving ${data['cache_saving_usd']:.4f}"
    )
    if data["batch_jobs"]:
        out_console.print(
            f"batch lane: {data['batch_jobs']} jobs answered from provider batches, "
            f"saving ${data['batch_saving_usd']:.4f} on live prices"
        )
    if data["shadow"]["runs"]:
        shadow = data["shadow"]
        out_console.print(
            f"shadow runs on full (apart from the above): {shadow['runs']}, ${shadow['cost_usd']:.4f}"
        )
