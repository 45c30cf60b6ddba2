"""``fleet classify``: JSONL in, one decision per line out, a report on stderr."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fleet.settings import Settings, load_settings

classify_module = importlib.import_module("fleet.cli.classify")

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    # The command loads settings itself; pin them to the repository's config, not the machine's env.
    settings = load_settings(config_dir=REPO, env={})
    monkeypatch.setattr(classify_module, "get_settings", lambda: settings)
    return settings


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("classify")(classify_module.classify)

    @app.command("noop")
    def noop() -> None:  # a second command keeps "classify" a subcommand, as in the real CLI
        """Nothing."""

    return app


LINES = [
    json.dumps({"prompt": "Add docstrings to utils.py.", "expected_tier": "mini", "why": "mechanical"}),
    "not json",
    json.dumps({"prompt": "Do a security review of our login flow.", "expected_tier": "full"}),
    json.dumps({"prompt": "", "expected_tier": "mini"}),
    json.dumps({"prompt": "Say hi.", "hints": {"latency_budget_ms": 300}, "unknown": 1}),
    json.dumps({"prompt": "Design the architecture of our ledger.", "expected_tier": "full"}),
    json.dumps({"prompt": "Write a blog post.", "tier": "fast", "expected_tier": "fast"}),
]


def run(args: list[str], stdin: str | None = None) -> tuple[int, list[dict[str, object]], str]:
    result = CliRunner().invoke(_app(), ["classify", *args], input=stdin)
    out = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, out, result.stderr


def test_one_decision_per_line_in_order_and_bad_lines_reported() -> None:
    # Given a mix of good and bad lines on stdin
    code, out, _ = run(["-"], stdin="\n".join(LINES) + "\n")
    # Then each line gets one object, in order, and the run goes on past bad lines
    assert code == 0
    assert len(out) == len(LINES)
    assert out[0]["tier"] == "mini" and out[0]["classifier"] == "heuristic"
    assert set(out[0]) == {"tier", "score", "reasons", "classifier"}
    assert out[1] == {"error": out[1]["error"], "line": 2}
    assert str(out[1]["error"]).startswith("invalid JSON")
    assert out[2]["tier"] == "full"
    assert out[3]["line"] == 4 and "prompt" in str(out[3]["error"])
    assert out[4]["line"] == 5 and "unknown: unknown field" in str(out[4]["error"])
    assert out[6] == {
        "tier": "fast",
        "score": None,
        "reasons": ["pinned to tier fast by the producer"],
        "classifier": "pinned",
    }


def test_no_file_argument_reads_stdin() -> None:
    code, out, _ = run([], stdin=LINES[0] + "\n")
    assert code == 0 and out[0]["tier"] == "mini"


def test_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(LINES[:3]) + "\n", encoding="utf-8")
    code, out, stderr = run([str(path)])
    assert code == 0 and len(out) == 3
    assert stderr == ""


def test_report_goes_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    code, out, stderr = run([str(path), "--report", "--tokens-in", "1000", "--tokens-out", "1000"])
    assert code == 0 and len(out) == len(LINES)
    assert "Routed jobs: 4 (bad lines: 3)" in stderr
    assert "accuracy against expected_tier: 4/4 = 100.0%" in stderr
    assert "confusion" in stderr
    assert "under-routed (expected full, routed mini or fast): 0" in stderr
    assert "1000 input + 1000 output tokens" in " ".join(stderr.split())
    assert "everything on full" in stderr


def test_report_counts_under_routed_jobs(tmp_path: Path) -> None:
    line = json.dumps({"prompt": "Extract the emails from this text.", "expected_tier": "full"})
    code, _, stderr = run(["--report"], stdin=line + "\n")
    assert code == 0
    assert "under-routed (expected full, routed mini or fast): 1" in stderr


def test_projected_cost_uses_the_first_link_prices(_settings: Settings) -> None:
    run_ = classify_module.ClassifyRun()
    list(classify_module.classify_lines([LINES[0], LINES[2]], _settings, run_))
    mini = _settings.tier("mini").links()[0]
    full = _settings.tier("full").links()[0]
    expected_mini = _settings.model(*mini).cost(1500, 500)
    assert classify_module._tier_cost(_settings, "mini", 1500, 500) == expected_mini
    assert classify_module._tier_cost(_settings, "full", 1500, 500) == _settings.model(*full).cost(1500, 500)
    assert run_.tiers == {"mini": 1, "full": 1}


def test_unreadable_input_exits_non_zero(tmp_path: Path) -> None:
    code, out, stderr = run([str(tmp_path / "missing.jsonl")])
    assert code == classify_module.EXIT_INPUT_UNREADABLE
    assert out == []
    assert "cannot read" in stderr
