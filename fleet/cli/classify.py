"""``fleet classify``: route JSONL task requests offline and report what routing would cost."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.table import Table

from fleet.cli.common import handle_errors
from fleet.errors import InvalidRequest
from fleet.models import Tier, validate_request
from fleet.router import Ask, Feedback, decide
from fleet.settings import Settings, get_settings

__all__ = ["EXIT_INPUT_UNREADABLE", "EXIT_OK", "ClassifyRun", "classify", "classify_lines", "render_report"]

#: Every line was processed (bad lines are reported in the output, not by the exit code).
EXIT_OK = 0
#: The input file could not be opened or read.
EXIT_INPUT_UNREADABLE = 2

#: Extra keys a labeled line may carry beside the TaskRequest fields.
_LABEL_KEYS = ("expected_tier", "why", "domain")
_TIERS = [t.value for t in Tier]


@dataclass
class ClassifyRun:
    """What a run saw: decisions per tier, labels where present, bad lines."""

    tiers: Counter[str] = field(default_factory=Counter)
    #: (expected, routed) for each line that carried a valid ``expected_tier``.
    labeled: list[tuple[str, str]] = field(default_factory=list)
    errors: int = 0
    #: (kind, from tier, to tier) -> decisions the quality feedback moved up.
    moved: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    @property
    def under_routed(self) -> int:
        """Lines expected on the full tier but routed to mini or fast."""
        return sum(1 for exp, got in self.labeled if exp == "full" and got in ("mini", "fast"))


def classify_lines(
    lines: Iterable[str],
    settings: Settings,
    run: ClassifyRun,
    *,
    ask: Ask | None = None,
    feedback: Feedback | None = None,
) -> Iterator[dict[str, Any]]:
    """One output object per non-blank input line, in order; a bad line yields ``{"error", "line"}``."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            run.errors += 1
            yield {"error": f"invalid JSON: {exc.msg}", "line": number}
            continue
        if not isinstance(data, dict):
            run.errors += 1
            yield {"error": "a task request must be a JSON object", "line": number}
            continue
        expected = data.pop("expected_tier", None)
        for key in _LABEL_KEYS:
            data.pop(key, None)
        try:
            request = validate_request(data, max_prompt_bytes=settings.limits.max_prompt_bytes)
        except InvalidRequest as exc:
            run.errors += 1
            yield {"error": "; ".join(exc.errors), "line": number}
            continue
        decision = decide(request, settings.router, ask=ask, feedback=feedback)
        if feedback is not None:
            before = decide(request, settings.router, ask=ask)
            if before.tier != decision.tier:
                run.moved[(request.kind or "none", before.tier.value, decision.tier.value)] += 1
        tier = decision.tier.value
        run.tiers[tier] += 1
        if expected in _TIERS:
            run.labeled.append((str(expected), tier))
        yield {
            "tier": tier,
            "score": decision.score,
            "reasons": decision.reasons,
            "classifier": decision.classifier,
        }


def _tier_cost(settings: Settings, tier: str, tokens_in: int, tokens_out: int) -> float:
    """USD for one job on a tier: the prices of the first link of its chain."""
    links = settings.tier(tier).links()
    if not links:
        return 0.0
    provider, model = links[0]
    return settings.model(provider, model).cost(tokens_in, tokens_out)


def render_report(
    run: ClassifyRun, settings: Settings, console: Console, *, tokens_in: int, tokens_out: int
) -> None:
    """Tier distribution, accuracy and confusion against labels, under-routing, projected cost."""
    total = sum(run.tiers.values())
    dist = Table(title=f"Routed jobs: {total} (bad lines: {run.errors})")
    dist.add_column("tier")
    dist.add_column("jobs", justify="right")
    dist.add_column("share", justify="right")
    dist.add_column("USD/job", justify="right")
    for tier in _TIERS:
        count = run.tiers.get(tier, 0)
        share = f"{count / total:.1%}" if total else "-"
        dist.add_row(tier, str(count), share, f"{_tier_cost(settings, tier, tokens_in, tokens_out):.6f}")
    console.print(dist)

    if run.labeled:
        correct = sum(1 for exp, got in run.labeled if exp == got)
        console.print(
            f"accuracy against expected_tier: {correct}/{len(run.labeled)} = {correct / len(run.labeled):.1%}"
        )
        matrix = Table(title="confusion (rows: expected, columns: routed)")
        matrix.add_column("expected \\ routed")
        for tier in _TIERS:
            matrix.add_column(tier, justify="right")
        pairs = Counter(run.labeled)
        for exp in _TIERS:
            matrix.add_row(exp, *(str(pairs.get((exp, got), 0)) for got in _TIERS))
        console.print(matrix)
    console.print(f"under-routed (expected full, routed mini or fast): {run.under_routed}")
    for (kind, before, after), count in sorted(run.moved.items()):
        console.print(f"quality feedback moved {count} {kind} job(s) from {before} up to {after}")

    routed = sum(n * _tier_cost(settings, t, tokens_in, tokens_out) for t, n in run.tiers.items())
    all_full = total * _tier_cost(settings, "full", tokens_in, tokens_out)
    saving = f"{1 - routed / all_full:.1%}" if all_full else "-"
    cost = Table(title=f"projected cost at {tokens_in} input + {tokens_out} output tokens per job")
    cost.add_column("routing")
    cost.add_column("USD", justify="right")
    cost.add_row("as routed", f"{routed:.4f}")
    cost.add_row("everything on full", f"{all_full:.4f}")
    cost.add_row("saving", saving)
    console.print(cost)


def _live_feedback(settings: Settings) -> Feedback:
    """The running fleet's pass rates, as its router reads them. Raises BrokerError, FleetNotRunning."""
    from fleet.discovery import broker_url, redis_client
    from fleet.quality.feedback import read_rates

    cfg = settings.quality.feedback
    rates = read_rates(redis_client(settings, broker_url(settings)), cfg.window_s)
    return lambda tier, kind: rates.move_up(str(tier), kind, cfg)


def _open_input(file: str | None) -> AbstractContextManager[TextIO]:
    if file is None or file == "-":
        return nullcontext(sys.stdin)  # stdin is not ours to close
    return Path(file).open(encoding="utf-8")


@handle_errors
def classify(
    file: Annotated[
        str | None, typer.Argument(help="JSONL file of task requests; '-' or nothing reads stdin.")
    ] = None,
    report: Annotated[
        bool, typer.Option("--report", help="Print distribution, accuracy and cost to stderr.")
    ] = False,
    tokens_in: Annotated[
        int, typer.Option("--tokens-in", min=0, help="Input tokens assumed per job for the cost.")
    ] = 1500,
    tokens_out: Annotated[
        int, typer.Option("--tokens-out", min=0, help="Output tokens assumed per job for the cost.")
    ] = 500,
    with_feedback: Annotated[
        bool,
        typer.Option(
            "--feedback",
            help="Apply the running fleet's quality feedback (pass rates); --report says what moved.",
        ),
    ] = False,
) -> None:
    """Route task requests (one JSON object per line) and print one decision per line.

    Each output line is {"tier", "score", "reasons", "classifier"}; a bad input line gives {"error", "line"}.

    Lines may carry "expected_tier" (and "why"): --report then adds accuracy and under-routing.

    Example:

        fleet classify tests/data/router/coding_train.jsonl --report > decisions.jsonl

        fleet classify requests.jsonl --report --feedback   (what the live pass rates move up)
    """
    settings = get_settings()
    err = Console(stderr=True)
    run = ClassifyRun()
    feedback = _live_feedback(settings) if with_feedback else None
    try:
        with _open_input(file) as lines:
            for out in classify_lines(lines, settings, run, feedback=feedback):
                typer.echo(json.dumps(out, ensure_ascii=False))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        err.print(f"cannot read {file or 'stdin'}: {reason}", style="red", markup=False)
        raise typer.Exit(EXIT_INPUT_UNREADABLE) from None
    if report:
        render_report(run, settings, err, tokens_in=tokens_in, tokens_out=tokens_out)
