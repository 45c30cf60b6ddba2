"""What every verb shares: exit codes, consoles, settings, and turning FleetErrors into messages."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

from fleet.boundary import is_broker_error, translate
from fleet.errors import (
    BrokerError,
    BudgetExceeded,
    ConfigError,
    EscalationError,
    EscalationNotFound,
    FleetError,
    FleetNotRunning,
    IllegalTransition,
    InvalidRequest,
    ResultTimeout,
    TaskNotFound,
)
from fleet.settings import Settings, load_settings

__all__ = [
    "EXIT_BROKER",
    "EXIT_BUDGET",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_ILLEGAL",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "err_console",
    "handle_errors",
    "out_console",
    "parse_queue_sizes",
    "print_json",
    "settings_for",
    "since_window",
]

#: Exit codes, stable for scripts.
EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran but its goal failed (e.g. the demo lost jobs)
EXIT_USAGE = 2  # bad arguments (typer's own)
EXIT_CONFIG = 3  # bad configuration
EXIT_BROKER = 4  # no fleet running / broker unreachable
EXIT_TIMEOUT = 5  # no final state in time
EXIT_INVALID = 6  # the request is invalid
EXIT_ILLEGAL = 7  # an escalation cannot make that transition
EXIT_NOT_FOUND = 8  # no such job or escalation
EXIT_BUDGET = 9  # the team's budget is spent (budgets.action = refuse)

out_console = Console()
err_console = Console(stderr=True)

_EXIT_FOR: list[tuple[type[FleetError], int]] = [
    (ConfigError, EXIT_CONFIG),
    (FleetNotRunning, EXIT_BROKER),
    (BrokerError, EXIT_BROKER),
    (ResultTimeout, EXIT_TIMEOUT),
    (InvalidRequest, EXIT_INVALID),
    (BudgetExceeded, EXIT_BUDGET),
    (IllegalTransition, EXIT_ILLEGAL),
    (TaskNotFound, EXIT_NOT_FOUND),
    (EscalationNotFound, EXIT_NOT_FOUND),
    (EscalationError, EXIT_FAILURE),
]

P = ParamSpec("P")
R = TypeVar("R")


def print_json(data: Any) -> None:
    """One JSON document on one stdout line (what scripts parse)."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """A FleetError becomes a one-line message on stderr (JSON with --json) and its exit code.

    A broker library's error that got past the boundary (:mod:`fleet.boundary`) is translated here,
    so no verb ever shows a traceback for an unreachable broker.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except FleetError as exc:
            _report(exc, bool(kwargs.get("as_json")))
        except Exception as exc:
            if not is_broker_error(exc):
                raise
            _report(translate(exc, None), bool(kwargs.get("as_json")))

    return wrapper


def _report(exc: FleetError, as_json: bool) -> NoReturn:
    code = next((c for cls, c in _EXIT_FOR if isinstance(exc, cls)), EXIT_FAILURE)
    if as_json:
        print_json({"error": exc.to_dict()})
    else:
        err_console.print(f"[bold red]error[/] ({exc.code}): {exc.message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def parse_queue_sizes(items: list[str] | None) -> dict[str, int]:
    """``["full=8", "mini=32"]`` -> ``{"full": 8, "mini": 32}``.

    Raises:
        ConfigError: an item is not QUEUE=N with a known queue and N >= 1.
    """
    from fleet.keys import QUEUES

    sizes: dict[str, int] = {}
    for item in items or []:
        name, sep, count = item.partition("=")
        if not sep or name not in QUEUES or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{item!r}: expected QUEUE=N with QUEUE one of {', '.join(QUEUES)} and N >= 1")
        sizes[name] = int(count)
    return sizes


def since_window(since: str) -> float:
    """``--since`` in seconds. Raises ConfigError: not a duration like 30m, 1h or 2d."""
    from fleet.costs import parse_since

    try:
        return parse_since(since)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--since", expected="30m, 1h, 2d") from None


def settings_for(profile: str | None = None, **overrides: Any) -> Settings:
    """Load settings for a command (``--profile`` wins over FLEET_PROFILE)."""
    return load_settings(profile=profile, overrides={k: v for k, v in overrides.items() if v is not None})
