"""Verbs for operators: status, config."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.syntax import Syntax
from rich.table import Table

from fleet.cli.common import handle_errors, out_console, print_json, settings_for
from fleet.keys import QUEUES, queue_lists
from fleet.settings import mask_url

__all__ = ["config_app", "status"]

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


def collect_status(timeout: float = 1.0) -> dict[str, Any]:
    """Per queue: depth, workers and concurrency; plus open escalations. One inspect broadcast."""
    from fleet.app import create_app
    from fleet.discovery import broker_url, redis_client
    from fleet.escalations import EscalationStore

    settings = settings_for()
    url = broker_url(settings)
    client = redis_client(settings, url)
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for name in queue_lists(queue):
            pipe.llen(name)
    lengths = pipe.execute()
    steps = len(queue_lists(QUEUES[0]))
    app = create_app(settings, url)
    try:
        inspect = app.control.inspect(timeout=timeout)
        active_queues = inspect.active_queues() or {}
        stats = inspect.stats() or {}
        active = inspect.active() or {}
    finally:
        app.close()
    queues: dict[str, dict[str, Any]] = {}
    for i, queue in enumerate(QUEUES):
        queues[queue] = {
            "depth": sum(lengths[i * steps : (i + 1) * steps]),
            "workers": 0,
            "concurrency": 0,
            "in_flight": 0,
            "configured_concurrency": settings.queues[queue].concurrency,
        }
    for node, consumed in active_queues.items():
        pool = (stats.get(node) or {}).get("pool", {})
        for q in consumed:
            entry = queues.get(q.get("name"))
            if entry is not None:
                entry["workers"] += 1
                entry["concurrency"] += int(pool.get("max-concurrency", 0) or 0)
                entry["in_flight"] += len(active.get(node, []))
    store = EscalationStore(client)
    return {
        "broker": mask_url(url),
        "queues": queues,
        "escalations_open": store.count("open"),
        "escalations_claimed": store.count("claimed"),
    }


@handle_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show each queue's depth, workers and concurrency, and the escalation inbox.

    Example: fleet status --json
    """
    data = collect_status()
    if as_json:
        print_json(data)
        return
    table = Table("queue", "depth", "in flight", "workers", "concurrency", title=f"fleet on {data['broker']}")
    for queue, q in data["queues"].items():
        table.add_row(queue, str(q["depth"]), str(q["in_flight"]), str(q["workers"]), str(q["concurrency"]))
    out_console.print(table)
    out_console.print(f"escalations: {data['escalations_open']} open, {data['escalations_claimed']} claimed")


@config_app.command("show")
@handle_errors
def config_show(
    profile: Annotated[str | None, typer.Option(help="Show the config with this profile applied.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as one JSON line.")] = False,
) -> None:
    """Print the effective configuration (files, profile, FLEET_* variables), secrets masked.

    Example: fleet config show --profile demo
    """
    data = settings_for(profile).masked()
    if as_json:
        print_json(data)
    else:
        out_console.print(Syntax(json.dumps(data, indent=2), "json", background_color="default"))
