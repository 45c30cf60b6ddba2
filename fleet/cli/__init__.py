"""The ``fleet`` command: one module per verb group, registered here."""

from __future__ import annotations

import typer

from fleet.cli.classify import classify
from fleet.cli.costs import costs
from fleet.cli.escalations import api, escalations_app
from fleet.cli.jobs import cancel, job, result, submit
from fleet.cli.ops import config_app, metrics, scale, status
from fleet.cli.quality import quality
from fleet.cli.run import demo, flower, mock_provider, up, worker

__all__ = ["app", "main"]

app = typer.Typer(
    name="fleet",
    help=(
        "A Celery worker fleet for AI-model jobs: a router sends each job to the cheapest tier that "
        "does it well (mini, standard, full, fast); failing calls walk a provider fallback chain; what "
        "no model can do waits for people in the escalation inbox.\n\n"
        "Start here: fleet demo   (everything on an embedded broker with a mock provider)"
    ),
    epilog=(
        "Examples:  fleet demo --tasks 200 --json  ·  fleet up --profile demo --scale full=8  ·  "
        'fleet submit "Add a docstring to parse_rate()" --wait 30  ·  fleet result ID  ·  fleet job ID  ·  '
        "fleet status  ·  "
        "fleet classify requests.jsonl --report  ·  fleet costs --since 1d  ·  fleet quality --since 1h  ·  "
        "fleet config show"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("up")(up)
app.command("demo")(demo)
app.command("worker")(worker)
app.command("flower")(flower)
app.command("mock-provider")(mock_provider)
app.command("submit")(submit)
app.command("result")(result)
app.command("job")(job)
app.command("cancel")(cancel)
app.command("status")(status)
app.command("scale")(scale)
app.command("metrics")(metrics)
app.command("costs")(costs)
app.command("quality")(quality)
app.add_typer(config_app, name="config")
app.add_typer(escalations_app, name="escalations")
app.command("api")(api)

app.command("classify")(classify)


def main() -> None:
    """Entry point of the console script."""
    app()
