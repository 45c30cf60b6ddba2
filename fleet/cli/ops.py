"""Verbs for operators: status, scale, metrics, config."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import redis
import typer
from rich.syntax import Syntax
from rich.table import Table

from fleet.boundary import broker_errors
from fleet.cli.common import handle_errors, out_console, parse_queue_sizes, print_json, settings_for
from fleet.errors import FleetError
from fleet.settings import Settings

__all__ = ["config_app", "metrics", "scale", "status"]

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@contextmanager
def _fleet() -> Iterator[tuple[Settings, redis.Redis, Any, str]]:
    """Settings, a Redis client, a Celery app and the broker URL of the running fleet."""
    from fleet.app import create_app
    from fleet.discovery import broker_url, redis_client

    settings = settings_for()
    url = broker_url(settings)
    app = create_app(settings, url)
    try:
        # kombu raises its own errors for remote control (inspect, pool_grow): one line, exit 4.
        with broker_errors(url):
            yield settings, redis_client(settings, url), app, url
    finally:
        app.close()


def collect_status(timeout: float = 1.0) -> dict[str, Any]:
    """Per queue: depth, oldest age, in flight, workers, concurrency, rate, bucket fill; breakers."""
    from fleet.monitor import collect

    with _fleet() as (settings, client, app, url):
        return collect(settings, client, app, url, timeout=timeout)


@handle_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show each queue's depth, oldest waiting job, in-flight jobs, workers, concurrency, rate over
    the last minute and rate-limit bucket fill; provider breakers; the escalation inbox.

    Example: fleet status --json
    """
    data = collect_status()
    if as_json:
        print_json(data)
        return
    table = Table(
        "queue", "depth", "oldest", "in flight", "workers", "concurrency", "started/min", "limit", "bucket",
        title=f"fleet on {data['broker']}",
    )  # fmt: skip
    for queue, q in data["queues"].items():
        table.add_row(
            queue, str(q["depth"]), f"{q['oldest_age_s']:.1f} s" if q["depth"] else "-", str(q["in_flight"]),
            str(q["workers"]), str(q["concurrency"]), str(q["rate_last_min"]), q["rate_limit"] or "-",
            "-" if q["bucket_fill"] is None else str(q["bucket_fill"]),
        )  # fmt: skip
    out_console.print(table)
    breakers = Table("provider", "breaker", "recent failures", title="providers")
    for provider, b in data["breakers"].items():
        colour = {"closed": "green", "open": "red"}.get(str(b["state"]), "yellow")
        breakers.add_row(provider, f"[{colour}]{b['state']}[/]", str(b["recent_failures"]))
    out_console.print(breakers)
    out_console.print(f"escalations: {data['escalations_open']} open, {data['escalations_claimed']} claimed")
    if data.get("budgets"):
        budgets = Table(
            "team", "today", "daily budget", "this month", "monthly budget", "", title="team budgets"
        )
        for team, b in data["budgets"].items():
            limit = [f"${v:.2f}" if v is not None else "-" for v in (b["daily_usd"], b["monthly_usd"])]
            state = "[red]at budget[/]" if b["over"] else ""
            budgets.add_row(team, f"${b['day_usd']:.2f}", limit[0], f"${b['month_usd']:.2f}", limit[1], state)
        out_console.print(budgets)
    batches = data.get("batches") or {}
    if batches.get("pooled") or batches.get("in_flight"):
        table = Table("link", "batch", "state", "items", "out for", "falls back in", title="batch lane")
        for link, n in batches["pooled"].items():
            table.add_row(link, "-", "pooled", str(n), "", "")
        for b in batches["in_flight"]:
            table.add_row(b["link"], b["batch_id"] or "-", b["state"], str(b["items"]), f"{b['age_s']:.0f}s",
                          f"{max(0.0, b['fallback_in_s']):.0f}s")  # fmt: skip
        out_console.print(table)


def _pool_sizes(app: Any, timeout: float) -> dict[str, tuple[str, int, tuple[int, int] | None]]:
    """node -> (queue, max concurrency, autoscale (min, max) or None) for every worker that answers."""
    inspect = app.control.inspect(timeout=timeout)
    stats = inspect.stats() or {}
    out = {}
    for node, consumed in (inspect.active_queues() or {}).items():
        node_stats = stats.get(node) or {}
        size = int(node_stats.get("pool", {}).get("max-concurrency", 0) or 0)
        auto = node_stats.get("autoscaler") or None
        bounds = (int(auto.get("min", 0)), int(auto.get("max", 0))) if auto else None
        for q in consumed:
            out[node] = (str(q.get("name")), bounds[1] if bounds else size, bounds)
    return out


@handle_errors
def scale(
    sizes: Annotated[list[str], typer.Argument(help="QUEUE=N: the new concurrency of each worker of QUEUE.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print before/after sizes as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the workers to report it.")] = 10.0,
) -> None:
    """Change the concurrency of running pools (every worker consuming each queue), live.

    Example: fleet scale full=8 mini=32
    """
    wanted = parse_queue_sizes(sizes)
    with _fleet() as (_, _client, app, _url):
        before = _pool_sizes(app, 1.0)
        changes: list[dict[str, Any]] = []
        for node, (queue, size, bounds) in before.items():
            if queue not in wanted or wanted[queue] == size:
                continue
            delta = wanted[queue] - size
            if bounds is not None:
                # An autoscaled pool: N becomes its ceiling (and its floor when below the old floor).
                app.control.autoscale(wanted[queue], min(bounds[0], wanted[queue]), destination=[node])
            elif delta > 0:
                app.control.pool_grow(delta, destination=[node])
            else:
                app.control.pool_shrink(-delta, destination=[node])
            changes.append({"node": node, "queue": queue, "before": size, "after": wanted[queue]})
        missing = sorted(set(wanted) - {q for q, _, _ in before.values()})
        if missing:
            raise FleetError(f"no running worker consumes {', '.join(missing)}: is the fleet up?")
        deadline = time.monotonic() + timeout
        pending = {c["node"]: c["after"] for c in changes}
        while pending and time.monotonic() < deadline:
            now = _pool_sizes(app, 1.0)
            pending = {n: s for n, s in pending.items() if now.get(n, ("", -1, None))[1] != s}
        if pending:
            raise FleetError(f"workers did not report their new size in time: {', '.join(sorted(pending))}")
    if as_json:
        print_json({"changes": changes})
        return
    table = Table("worker", "queue", "before", "after", title="scaled")
    for c in changes:
        table.add_row(c["node"], c["queue"], str(c["before"]), str(c["after"]))
    out_console.print(table if changes else "nothing to change: every pool already has that size")


@handle_errors
def metrics(
    port: Annotated[int, typer.Option(help="Port of the Prometheus endpoint.")] = 9808,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve queue depth, oldest-job age and start rate per queue as Prometheus metrics (/metrics),
    for an autoscaler (KEDA's prometheus scaler, an HPA through prometheus-adapter).

    Example: fleet metrics --port 9808
    """
    from fleet.escalations import RedisEscalationStore
    from fleet.monitor import prometheus_text, queue_snapshot

    with _fleet() as (settings, client, _app, _url):
        client.ping()  # an unreachable broker fails here, in one line, not at the first scrape

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = prometheus_text(
                    queue_snapshot(settings, client), RedisEscalationStore(client).count("open")
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer((host, port), Handler)
        out_console.print(f"metrics on http://{host}:{server.server_port}/metrics (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


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
