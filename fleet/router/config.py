"""The router's settings: the ``[router]`` table, which ships as ``config/router.toml``.

The keyword sets are data, not code: they have no Python defaults and live in ``config/router.toml``
(in a wheel, ``fleet/_defaults/config/router.toml``). :func:`fleet.settings.load_settings` reads that
file into ``settings.router``, under the config directory's own ``router.toml``, a profile and
``FLEET_ROUTER__*`` variables; :func:`default_router_settings` reads the shipped file alone, for code
and tests that route without a config directory.

A leaf module: it imports pydantic, the standard library and :mod:`fleet.errors` only. Never
:mod:`fleet.settings`, which imports it: importing the router must not load the fleet's settings.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import ConfigError

__all__ = [
    "ROUTER_FILE",
    "HeuristicSettings",
    "RouterKeywords",
    "RouterSettings",
    "RouterThresholds",
    "RouterWeights",
    "default_router_settings",
    "router_table",
    "shipped_router_file",
]

#: The router's file below a config directory (``FLEET_CONFIG_DIR``, or the shipped defaults).
ROUTER_FILE = Path("config", "router.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouterKeywords(_Section):
    """Phrases the heuristic looks for in the ask (never in pasted code, logs or documents).

    Matching is case-insensitive on whole words; a space also matches ``-`` or ``_``, and a
    trailing ``*`` matches any word ending (``architect*`` matches "architecture").
    """

    #: Work that needs a frontier model: design, architecture, trade-offs, security, proofs, algorithms.
    hard: list[str]
    #: An open or ambiguous goal the model must interpret.
    ambiguous: list[str]
    #: High stakes: money, law, health, personal data, production safety.
    stakes: list[str]
    #: Debugging; across several components it counts as hard.
    debugging: list[str]
    #: Components of a system, counted to tell cross-component work from local work.
    components: list[str]
    #: Mechanical, bounded transformations a small model does well.
    mechanical: list[str]
    #: Mechanical verbs ("convert", "tag", "extract") that count as ``mechanical`` only when they lead a
    #: clause (the ask's start, a new sentence or line, after "please" or "can you") or the kind's
    #: label: "Convert these dates" is mechanical, "explain how analysts should convert" is not.
    mechanical_verbs: list[str]
    #: Verbs and phrases that open an instruction or a request ("write", "summarise", "can you",
    #: "I need"): an ask without one, without a question and with a narrated event is a ``situation``.
    instructions: list[str]
    #: Light generative asks: summaries, short replies, simple explanations.
    light: list[str]
    #: Precise output specifications: the job is well specified.
    precise: list[str]
    #: A small, bounded piece of code asked for.
    bounded_code: list[str]
    #: Words that point at pasted material ("this article", "the log below"): after the first paragraph
    #: that has one, the rest of the prompt is pasted, except a closing question or instruction.
    pasted_pointers: list[str]
    #: Asks that need judgement about the given input (review, explain, refactor): they keep a job
    #: that works on pasted input from counting as bounded by it.
    judgement: list[str]
    #: Questions that ask whether to take an action or what to do now ("should we", "can I just",
    #: "is it safe to", "what now"): a decision, which is judgement even when the ask is short.
    decision: list[str]
    #: Consequential actions: money movement (refund, payout, wire), irreversible operations (drop,
    #: purge, roll back, bulk-close), people decisions (terminate, discipline). Weightless alone by
    #: default; a decision about one (or a question about doing one) is ``consequential_decision``.
    consequential: list[str]
    #: Who the output goes to when that makes errors costly: investors, regulators, auditors, courts.
    audience: list[str]
    #: Explaining a general concept ("explain", "what's the difference", "in plain language"): without
    #: a decision, a consequential action or pasted material, it keeps ``stakes`` from counting.
    general: list[str]
    #: Nouns that introduce pasted material in a line ending with ':' ("Customer email:").
    pasted_cues: list[str]


class RouterWeights(_Section):
    """Points each feature adds to (or takes from) the base score; counted once per feature.

    A weight named after a keyword set applies when the ask holds a phrase of that set.
    """

    hard: float = 2.0
    ambiguous: float = 1.0
    stakes: float = 1.0
    #: Debugging that names at least ``thresholds.components`` distinct components.
    cross_component: float = 1.0
    #: At least ``thresholds.many_files`` files in ``hints.files`` and paths in the ask.
    many_files: float = 1.0
    mechanical: float = -2.0
    light: float = -1.0
    precise: float = -1.0
    bounded_code: float = -1.0
    #: Asks whether to act or what to do now.
    decision: float = 1.0
    #: The output goes to a consequential audience (see ``keywords.audience``).
    audience: float = 1.0
    #: Names a consequential action (see ``keywords.consequential``).
    consequential: float = 0.0
    #: A decision (``keywords.decision``, or a question about a consequential action) that concerns
    #: stakes or a consequential action: "can I just charge the card on file?".
    consequential_decision: float = 1.0
    #: A report of what happened that asks nothing and gives no instruction: judgement decides what
    #: matters ("A departing VP exported 4,000 contacts on his last day.").
    situation: float = 1.0
    #: A short ask made mostly of the numbers it works on (arithmetic, conversion, ordering).
    given_values: float = -1.0
    #: Asks for judgement; 0 by default: it only stops ``input_bound`` from applying.
    judgement: float = 0.0
    #: The job works only on pasted input (extract, list, change) with no judgement asked.
    input_bound: float = -1.0
    #: ``response_schema`` set: the output is specified exactly.
    response_schema: float = -1.0
    #: A one-line question of at most ``thresholds.short_question_chars`` with no hard feature.
    short_question: float = -1.0


class RouterThresholds(_Section):
    """Limits that turn counts and lengths into features."""

    #: Score of an ask with no deciding feature (3: standard, the safe middle).
    base_score: float = Field(default=3.0, ge=1, le=5)
    #: Files touched (hints.files plus distinct paths in the ask) that count as a wide change.
    many_files: int = Field(default=4, ge=1)
    #: Distinct components named by a debugging ask that make it cross-component.
    components: int = Field(default=2, ge=1)
    #: Length of a quick question ("What is the capital of Australia?").
    short_question_chars: int = Field(default=80, ge=0)
    #: Pasted input at or over this many characters makes a job without judgement ``input_bound``.
    input_bound_chars: int = Field(default=150, ge=0)
    #: Pasted input at or over this many characters is noted in the reasons.
    pasted_note_chars: int = Field(default=400, ge=0)
    #: ``situation`` applies to asks of at most this many characters (a report, not a document).
    situation_chars: int = Field(default=400, ge=0)
    #: ``given_values`` applies to asks of at most this many characters...
    given_values_chars: int = Field(default=200, ge=0)
    #: ...that hold at least this many numbers...
    given_values_min: int = Field(default=2, ge=1)
    #: ...making at least this share of its words.
    given_values_share: float = Field(default=0.25, ge=0, le=1)
    #: Characters of the ask read from its start and its end; the middle of a longer ask is skipped.
    ask_head_chars: int = Field(default=2000, ge=100)
    ask_tail_chars: int = Field(default=600, ge=0)


class HeuristicSettings(_Section):
    """The content classifier's keyword sets, weights and thresholds (``[router.heuristic.*]``)."""

    #: No default: the keyword sets are data, shipped in ``config/router.toml``.
    keywords: RouterKeywords
    weights: RouterWeights = Field(default_factory=RouterWeights)
    thresholds: RouterThresholds = Field(default_factory=RouterThresholds)


class RouterSettings(_Section):
    """The ``[router]`` table: the fast-tier threshold, the content classifier and its tables."""

    #: A latency budget at or under this many milliseconds routes to the fast tier.
    fast_threshold_ms: int = Field(default=2000, gt=0)
    #: Which content classifier scores jobs without a deciding hint: "heuristic" or "llm".
    classifier: Literal["heuristic", "llm"] = "heuristic"
    #: Timeout of the LLM classifier's call, in seconds.
    llm_timeout_s: float = Field(default=2.0, gt=0)
    #: Route in the producer, skipping the router hop (a queue wait and the router's CPU): "fast"
    #: for jobs the rules send to the fast tier (a latency budget), "all" for every job the
    #: heuristic can route; "off" (the default) leaves it to the router worker. Needs the
    #: heuristic classifier; jobs routed in the producer get no outcome feedback.
    in_producer: Literal["off", "fast", "all"] = "off"
    #: Share of answered jobs below the full tier re-run on full in the background (shadow
    #: evaluation: both answers judged side by side; the producer's result does not change).
    shadow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: The heuristic classifier's keyword sets, weights and thresholds (no default: its keyword sets
    #: ship as ``config/router.toml``; see :func:`default_router_settings`).
    heuristic: HeuristicSettings


def shipped_router_file() -> Path:
    """``config/router.toml`` as the package ships it: in the wheel, else in the source checkout."""
    fleet_dir = Path(__file__).resolve().parents[1]
    packaged = fleet_dir / "_defaults" / ROUTER_FILE
    return packaged if packaged.is_file() else fleet_dir.parent / ROUTER_FILE


def router_table(document: dict[str, Any], file: Path | str) -> dict[str, Any]:
    """The ``[router]`` table of a parsed router.toml (empty when the file has none).

    Raises:
        ConfigError: the file holds another top-level key, or ``router`` is not a table.
    """
    others = sorted(set(document) - {"router"})
    if others:
        raise ConfigError(
            "unknown key (router.toml holds the [router] table only)", file=str(file), key=others[0]
        )
    table = document.get("router", {})
    if not isinstance(table, dict):
        raise ConfigError("expected a table", file=str(file), key="router")
    return table


@lru_cache(maxsize=1)
def default_router_settings() -> RouterSettings:
    """The router settings the package ships, read once; shared, so copy (``model_copy``) to change.

    Raises:
        ConfigError: the shipped file is missing or invalid (a broken installation or checkout).
    """
    path = shipped_router_file()
    try:
        with path.open("rb") as fh:
            return RouterSettings.model_validate(router_table(tomllib.load(fh), path))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"the shipped router table does not load: {exc}", file=str(path)) from None
