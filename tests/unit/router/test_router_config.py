"""The router's settings: the keyword sets are data, shipped as config/router.toml, never code."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet.errors import ConfigError
from fleet.router.config import (
    ROUTER_FILE,
    HeuristicSettings,
    RouterKeywords,
    RouterSettings,
    RouterThresholds,
    RouterWeights,
    default_router_settings,
    router_table,
    shipped_router_file,
)
from fleet.settings import default_config_dir, load_settings

REPO = Path(__file__).resolve().parents[3]


def _shipped_table() -> dict[str, object]:
    with (REPO / ROUTER_FILE).open("rb") as fh:
        return router_table(tomllib.load(fh), REPO / ROUTER_FILE)


def test_the_shipped_file_is_the_repositorys_and_the_settings_default() -> None:
    # Given a source checkout, the package ships the repository's config/router.toml
    assert shipped_router_file() == REPO / ROUTER_FILE == default_config_dir() / ROUTER_FILE
    # Then the fleet's settings route with exactly that table, read once and shared
    assert load_settings(env={}).router == default_router_settings()
    assert default_router_settings() is default_router_settings()


def test_every_keyword_set_ships_non_empty() -> None:
    keywords = default_router_settings().heuristic.keywords
    for name in RouterKeywords.model_fields:
        phrases = getattr(keywords, name)
        assert phrases, f"router.heuristic.keywords.{name} is empty"
        assert all(isinstance(p, str) and p.strip() == p and p for p in phrases), name


def test_the_shipped_file_names_every_knob() -> None:
    # Weights and thresholds have defaults in code; the file still shows each one to operators.
    heuristic = _shipped_table()["heuristic"]
    assert isinstance(heuristic, dict)
    assert set(heuristic) == set(HeuristicSettings.model_fields)
    assert set(heuristic["keywords"]) == set(RouterKeywords.model_fields)
    assert set(heuristic["weights"]) == set(RouterWeights.model_fields)
    assert set(heuristic["thresholds"]) == set(RouterThresholds.model_fields)


def test_router_settings_without_keyword_sets_are_refused() -> None:
    # A router with no keywords would route everything to the base score: no silent empty default.
    with pytest.raises(ValidationError, match="heuristic"):
        RouterSettings()
    with pytest.raises(ValidationError, match="keywords"):
        RouterSettings.model_validate({"heuristic": {}})


def test_router_toml_holds_the_router_table_only() -> None:
    assert router_table({}, "router.toml") == {}
    with pytest.raises(ConfigError) as info:
        router_table({"router": {}, "broker": {"url": ""}}, "x/router.toml")
    assert info.value.file == "x/router.toml" and info.value.key == "broker"
    with pytest.raises(ConfigError, match="expected a table"):
        router_table({"router": 3}, "x/router.toml")
