"""Verbs that run the fleet: up, demo, worker, flower, mock-provider."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleet.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    err_console,
    handle_errors,
    out_console,
    parse_queue_sizes,
    print_json,
    settings_for,
)
from fleet.demo import Progress as DemoProgress
from fleet.demo import lost_jobs, run_workload, summarise
from fleet.errors import ConfigError, FleetError
from fleet.keys import QUEUES
from fleet.supervisor import FleetOptions, Supervisor, is_loopback

__all__ = ["demo", "flower", "mock_provider", "up", "worker"]


#: ``--trace-file`` of ``fleet up`` and ``fleet demo``.
TraceFile = Annotated[
    Path | None,
    typer.Option(
        "--trace-file",
        help="Also write every finished span, from every process, as one JSON line to this file.",
    ),
]


class _Stop(Exception):
    """Raised in the main thread by SIGTERM, so shutdown runs the same path as Ctrl-C."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def _trap_stop_signals() -> dict[int, Any]:
    """SIGTERM and SIGINT both stop the fleet, even when a shell started us with SIGINT ignored."""
    return {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _trace_path(path: Path | None) -> str | None:
    """An absolute path: the pools run with other working directories."""
    return str(path.expanduser().resolve()) if path is not None else None


@handle_errors
def up(
    profile: Annotated[str | None, typer.Option(help="Config profile, e.g. 'demo' (mock provider).")] = None,
    failure_rate: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="With the mock: probability a call fails.")
    ] = None,
    scale: Annotated[
        list[str] | None, typer.Option(help="QUEUE=N: start a pool with N slots (repeatable).")
    ] = None,
    flower_port: Annotated[
        int | None, typer.Option(help="Flower's port (default from config: 5555).")
    ] = None,
    no_flower: Annotated[bool, typer.Option("--no-flower", help="Do not start Flower.")] = False,
    trace_file: TraceFile = None,
) -> None:
    """Run the fleet in the foreground until Ctrl-C or SIGTERM.

    Starts the embedded broker when no FLEET_REDIS_URL is set (data in .fleet/broker, append-only
    file on), one worker pool per queue, and Flower on 127.0.0.1:5555.

    Example: fleet up --profile demo --scale full=8
    """
    settings = settings_for(
        profile, **{"mock.failure_rate": failure_rate, "telemetry.trace_file": _trace_path(trace_file)}
    )
    options = FleetOptions(scale=parse_queue_sizes(scale), flower=not no_flower, flower_port=flower_port)
    sup = Supervisor(settings, options, on_event=lambda msg: err_console.print(f"[dim]·[/] {msg}"))
    previous = _trap_stop_signals()
    try:
        sup.start()
        err_console.print(
            f"[bold green]fleet is up[/]: broker {sup.redis_url.split('@')[-1]}"
            + (f", flower {sup.flower_url}" if sup.flower_url else "")
            + f", logs in {sup.log_dir}/. Ctrl-C stops it."
        )
        while True:
            for event in sup.check():
                err_console.print(f"[yellow]![/] {event}")
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stop):
        err_console.print("stopping: in-flight jobs finish, waiting ones stay queued ...")
    finally:
        _restore_signals(previous)
        sup.stop()
    err_console.print("fleet stopped")


def _render(progress: DemoProgress, bar: Progress, task_id: Any) -> Group:
    bar.update(task_id, completed=progress.done, total=progress.total)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("submitted", "completed", "escalated", "mini", "standard", "full", "fast"):
        table.add_column(col, justify="right")
    table.add_row(
        str(progress.submitted),
        f"[green]{progress.completed}[/]",
        f"[yellow]{progress.escalated}[/]",
        *(str(progress.by_tier.get(t, 0)) for t in ("mini", "standard", "full", "fast")),
    )
    if not progress.pipelines_total:
        return Group(bar, table)
    line = "  ".join(
        f"{name} {progress.pipelines_done.get(name, 0)}/{total}"
        for name, total in sorted(progress.pipelines_total.items())
    )
    return Group(bar, table, f"[bold]pipelines[/] (done/submitted): {line}")


def _simulated(
    settings: Any, sup: Supervisor, jobs: list[dict[str, Any]], results: dict[str, Any], task_ids: list[str]
) -> dict[str, Any]:
    """The simulated quality figures (when the mock simulates quality) and the shadow runs' line."""
    from fleet.costs import read_records
    from fleet.demo import simulated_quality
    from fleet.discovery import redis_client

    out: dict[str, Any] = {}
    if settings.mock.simulate_quality and sup.mock_url:
        full_model = settings.tier("full").links()[0][1]
        out.update(simulated_quality(sup.mock_url, full_model, jobs, results, task_ids))
    shadows = [r for r in read_records(redis_client(settings, sup.redis_url), None) if r.status == "shadow"]
    out["shadow_runs"] = len(shadows)
    out["shadow_cost_usd"] = round(sum(r.cost_usd for r in shadows), 6)
    return out


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="fleet demo summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key in ("submitted", "completed", "escalated", "lost", "fallbacks"):
        style = "red" if key == "lost" and summary[key] else ""
        table.add_row(key, f"[{style}]{summary[key]}[/]" if style else str(summary[key]))
    for tier, count in summary["by_tier"].items():
        table.add_row(f"tier {tier}", str(count))
    for name, row in summary.get("pipelines", {}).items():
        lost = f", [red]{row['lost']} lost[/]" if row["lost"] else ""
        table.add_row(
            f"pipeline {name}", f"{row['completed']}/{row['submitted']} ({row['escalated']} escalated{lost})"
        )
    saving = 1 - summary["cost_usd"] / summary["cost_all_full_usd"] if summary["cost_all_full_usd"] else 0.0
    table.add_row("cost (judge included)", f"${summary['cost_usd']:.4f}")
    table.add_row("cost if all on full", f"${summary['cost_all_full_usd']:.4f}")
    table.add_row("saving", f"{saving:.0%}")
    if "cache_saving_usd" in summary:
        table.add_row(
            "prompt caches (SIMULATED)",
            f"{summary['cache_hit_ratio']:.1%} of input tokens, saving ${summary['cache_saving_usd']:.4f}",
        )
    table.add_row(
        "judged / upgraded / polished", f"{summary['judged']} / {summary['upgraded']} / {summary['polished']}"
    )
    if "quality" in summary:
        table.add_row("quality (SIMULATED)", f"{summary['quality']:.1%}")
        table.add_row("quality if all on full (SIMULATED)", f"{summary['quality_all_full']:.1%}")
    if summary.get("shadow_runs"):
        table.add_row("shadow runs on full", f"{summary['shadow_runs']} (${summary['shadow_cost_usd']:.4f})")
    table.add_row("latency p50 / p99", f"{summary['p50_ms']:.0f} ms / {summary['p99_ms']:.0f} ms")
    table.add_row("broker", summary["broker"])
    return table


@handle_errors
def demo(
    tasks: Annotated[int, typer.Option(min=1, max=100_000, help="How many jobs to submit.")] = 200,
    pipelines: Annotated[
        int,
        typer.Option(
            min=0, max=100_000, help="How many of those jobs run a pipeline (docs/pipelines.md); 0: none."
        ),
    ] = 8,
    failure_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Probability each mock call fails (spread over fault kinds)."),
    ] = 0.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON line (last line of stdout).")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for every job.")] = 600.0,
    seed: Annotated[int, typer.Option(help="Seed of the mock provider's faults.")] = 0,
    flower: Annotated[bool, typer.Option(help="Start Flower (on a free port).")] = True,
    quality_gate: Annotated[
        bool, typer.Option("--quality-gate/--no-quality-gate", help="Judge answers and act on failed ones.")
    ] = True,
    trace_file: TraceFile = None,
) -> None:
    """Run the whole fleet on an embedded broker with the mock provider, submit a sample workload,
    show live progress, print a summary, and stop everything it started.

    Of the --tasks jobs, --pipelines (default 8, at most --tasks) are pipeline jobs spread through
    the run, two of each shipped pipeline (extract_reason, research, review, draft_polish): each is
    one task id whose steps run on several tiers. They count in every total like any job.

    The mock SIMULATES model quality (some answers of a model below a job's difficulty are flawed; a
    judge catches most of them): the summary's quality figures are the mock's hidden truth, labelled
    simulated. See docs/quality.md.

    JSON summary keys: submitted, completed, escalated, lost, by_tier, fallbacks, cost_usd (judge
    included), cost_all_full_usd (a pipeline: its input answered once on full), cached_input_tokens,
    cache_hit_ratio, cache_saving_usd (the providers' prompt caches, SIMULATED), judge_cost_usd,
    judged, upgraded, polished, escalated_by_gate, pipelines ({NAME: {submitted, completed,
    escalated, lost}}), quality, quality_all_full (simulated), shadow_runs, shadow_cost_usd, p50_ms,
    p99_ms, broker; with lost jobs, lost_jobs (up to 20: task_id, state, queue, for_s, worker,
    attempt: where each was last seen). Exits 0 only when lost is 0 (pipeline jobs included).

    Example: fleet demo --tasks 200 --failure-rate 0.3 --json
    """
    from fleet.producer import Client
    from fleet.workload import demo_jobs

    settings = settings_for(
        "demo",
        **{
            "mock.failure_rate": failure_rate,
            "mock.seed": seed,
            "mock.enabled": True,
            "telemetry.trace_file": _trace_path(trace_file),
            "quality.enabled": quality_gate,
        },
    )
    console = err_console if as_json else out_console
    tmp = tempfile.TemporaryDirectory(prefix="fleet-demo-")
    log_dir = Path(settings.state_dir) / "logs" / "demo"
    for old in log_dir.glob("*.log"):
        old.unlink()
    options = FleetOptions(
        flower=flower,
        flower_port=0,
        broker_dir=Path(tmp.name) / "broker",
        log_dir=log_dir,
        publish_state=False,
        shutdown_grace_s=10.0,
        env={"FLEET_QUALITY__ENABLED": "true" if quality_gate else "false"},
    )
    sup = Supervisor(settings, options, on_event=lambda msg: console.print(f"[dim]·[/] {msg}"))
    previous = _trap_stop_signals()
    started = time.monotonic()
    try:
        with console.status("starting the fleet ..."):
            sup.start()
        console.print(f"fleet ready in {time.monotonic() - started:.1f} s; logs in {log_dir}/")
        client = Client(settings, redis_url=sup.redis_url)
        jobs = demo_jobs(tasks, pipelines)
        bar = Progress(
            TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        bar_task = bar.add_task("jobs", total=len(jobs))
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            results, task_ids, _ = run_workload(
                client,
                jobs,
                timeout_s=timeout,
                on_progress=lambda p: live.update(_render(p, bar, bar_task)),
            )
        if not console.is_terminal:
            console.line()  # off a terminal, Live leaves its last row unterminated
        summary = summarise(settings, sup.redis_url, task_ids, results, jobs)
        summary.update(_simulated(settings, sup, jobs, results, task_ids))
        if summary["lost"]:
            summary["lost_jobs"] = lost_jobs(client, task_ids, results)
        client.close()
    except (KeyboardInterrupt, _Stop):
        console.print("[yellow]interrupted[/]: stopping everything the demo started ...")
        raise typer.Exit(130) from None
    finally:
        _restore_signals(previous)
        with console.status("stopping the fleet ..."):
            sup.stop()
        tmp.cleanup()
    console.print(_summary_table(summary))
    for row in summary.get("lost_jobs", []):
        where = ", ".join(
            f"{k} {row[k]}" for k in ("queue", "for_s", "worker", "attempt", "detail") if row.get(k)
        )
        console.print(f"[red]lost[/] {row['task_id']}: {row['state']}" + (f" ({where})" if where else ""))
    if as_json:
        print_json(summary)
    raise typer.Exit(EXIT_OK if summary["lost"] == 0 else EXIT_FAILURE)


@handle_errors
def worker(
    queue: Annotated[str, typer.Argument(help=f"The queue to consume: {', '.join(QUEUES)}.")],
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Worker slots (default: the queue file).")
    ] = None,
    pool: Annotated[str | None, typer.Option(help="prefork, threads, asyncio, gevent or solo.")] = None,
    hostname: Annotated[str | None, typer.Option(help="Node name (default QUEUE@%h).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run one Celery worker pool for one queue (what each container of docker-compose runs).

    Example: fleet worker full --concurrency 8
    """
    if queue not in QUEUES:
        raise ConfigError(f"unknown queue {queue!r}: expected one of {', '.join(QUEUES)}")
    settings = settings_for()
    qs = settings.queues[queue]
    from fleet.worker import app, worker_argv, worker_env

    os.environ.update(worker_env(pool or qs.pool))
    app.worker_main(
        worker_argv(
            queue,
            concurrency=concurrency or qs.concurrency,
            pool=pool or qs.pool,
            hostname=hostname,
            loglevel=loglevel,
            autoscale=None if concurrency else qs.autoscale,
        )
    )


@handle_errors
def flower(
    address: Annotated[str | None, typer.Option(help="Address to listen on (default from config).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from config: 5555).")] = None,
) -> None:
    """Run Flower for the fleet. Off loopback it requires FLEET_FLOWER_BASIC_AUTH=user:password.

    Example: FLEET_FLOWER_BASIC_AUTH=ops:secret fleet flower --address 0.0.0.0
    """
    import os

    settings = settings_for()
    address = address or settings.flower.address
    argv = ["flower", f"--address={address}", f"--port={port or settings.flower.port}"]
    if settings.flower.basic_auth is not None:
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower.basic_auth.get_secret_value()
    elif not is_loopback(address):
        raise FleetError(
            f"Flower would listen on {address} without authentication: "
            "set FLEET_FLOWER_BASIC_AUTH=user:password"
        )
    from fleet.app import app

    app.start(argv)


@handle_errors
def mock_provider(
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    failure_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability a call fails.")] = 0.0,
    latency_ms: Annotated[float, typer.Option(min=0.0, help="Mean latency of a call.")] = 20.0,
    seed: Annotated[int, typer.Option(help="Seed: the same calls get the same faults.")] = 0,
) -> None:
    """Serve the mock provider (OpenAI and Anthropic wire formats, fault injection, GET /stats).

    Example: fleet mock-provider --port 8000 --failure-rate 0.2 --latency-ms 200
    """
    from fleet.providers.mock_server import MockConfig, serve

    config = MockConfig(failure_rate=failure_rate, latency_ms=latency_ms, seed=seed)

    def ready(actual: int) -> None:
        print(f"mock provider listening on http://{host}:{actual}", flush=True)

    serve(config, host=host, port=port, ready=ready)
