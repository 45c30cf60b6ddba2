"""Pipelines as data: the shipped file loads; a bad one fails at start naming the file, the pipeline,
the step and the key; templates and chunks render as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.errors import ConfigError, InvalidRequest
from fleet.models import validate_request
from fleet.pipelines.config import load_pipelines
from fleet.pipelines.engine import step_id, step_of
from fleet.pipelines.render import RenderError, chunks, map_items, render
from fleet.settings import load_settings

#: Where the first step of pipeline p is, in an error message.
S0 = "pipelines.p.steps[0] (a)"
GOOD_STEP = '[[pipelines.p.steps]]\nname = "a"\ntier = "mini"\nprompt = "{{input}}"\n'


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pipelines.toml"
    path.write_text(text)
    load_pipelines(path)


def test_the_shipped_pipelines_load_with_their_step_gates() -> None:
    settings = load_settings(env={})
    assert set(settings.pipelines) == {"extract_reason", "draft_polish", "research", "review"}
    policy = settings.quality.policy("mini", "pipeline.draft_polish.draft")
    assert (policy.sample_rate, policy.action, policy.polish_tier) == (1.0, "polish", "full")


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (GOOD_STEP.replace('"mini"', '"huge"'), S0 + ".tier", "Input should be"),
        (GOOD_STEP + "colour = 1\n", S0 + ".colour", "unknown key"),
        (GOOD_STEP.replace("{{input}}", "{{steps.later}}"), S0 + ".prompt", "no earlier step"),
        (GOOD_STEP.replace("{{input}}", "{{item}}"), S0 + ".prompt", "only known in a map"),
        (GOOD_STEP.replace("{{input}}", "{{ secrets }}"), S0 + ".prompt", "unknown placeholder"),
        (GOOD_STEP + GOOD_STEP, "pipelines.p.steps[1] (a).name", "comes earlier"),
        (GOOD_STEP + 'map = "chunks"\n', S0 + ".map", "last step cannot be a map"),
        (GOOD_STEP + 'map = "steps.x.y"\n' + GOOD_STEP.replace('"a"', '"b"'), S0 + ".map", "earlier step"),
        (GOOD_STEP + "response_schema = { type = 3 }\n", S0 + ".response_schema", "not a valid JSON"),
        ('[[pipelines.p.steps]]\nname = "a"\ntier = "mini"\n', S0 + ".prompt", "missing"),
        ("[pipelines.Bad]\n", "pipelines.Bad", "lowercase"),
    ],
)  # fmt: skip
def test_a_bad_pipeline_file_names_the_file_the_pipeline_the_step_and_the_key(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "pipelines.toml")) and where in message and what in message


def test_a_config_directory_with_a_bad_pipelines_file_fails_at_start(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fleet.toml").write_text((root / "config" / "fleet.toml").read_text())
    (tmp_path / "queues").symlink_to(root / "queues")
    (tmp_path / "config" / "pipelines.toml").write_text(GOOD_STEP.replace('"mini"', '"huge"'))
    with pytest.raises(ConfigError, match=r"pipelines\.toml: pipelines\.p\.steps\[0\] \(a\)\.tier"):
        load_settings(config_dir=tmp_path, env={})


def test_a_pipeline_request_cannot_pin_a_tier_or_a_schema() -> None:
    with pytest.raises(InvalidRequest, match="a pipeline request cannot set tier"):
        validate_request({"prompt": "x", "pipeline": "review", "tier": "mini"})
    assert validate_request({"prompt": "x", "pipeline": "review"}).pipeline == "review"


def test_templates_fill_the_input_outputs_fields_and_items() -> None:
    claims = ['{"claims": ["a", "b"]}', '{"claims": ["c"]}']
    outputs = {"extract": json.dumps({"dates": ["2026-01-15"], "who": "Dana"}), "claims": claims}
    assert render("{{input}}|{{ steps.extract.who }}", input="doc", outputs=outputs) == "doc|Dana"
    assert json.loads(render("{{steps.extract.dates}}", input="", outputs=outputs)) == ["2026-01-15"]
    assert json.loads(render("{{steps.claims.claims}}", input="", outputs=outputs)) == ["a", "b", "c"]
    assert render("{{steps.extract.missing}}!", input="", outputs=outputs) == "!"
    assert (
        render("{{index}}/{{count}}: {{item}}", input="", outputs={}, item="x", index=0, count=2) == "1/2: x"
    )


def test_chunks_cut_at_paragraphs_and_stay_within_the_size() -> None:
    text = "\n\n".join("word " * 50 for _ in range(20))
    pieces = chunks(text, 600)
    assert all(0 < len(p) <= 600 for p in pieces) and len(pieces) >= 9
    assert " ".join(pieces).split() == text.split()  # nothing lost, nothing added
    assert chunks("x" * 1000, 300) == ["x" * 300, "x" * 300, "x" * 300, "x" * 100]


def test_a_map_over_something_that_is_not_a_list_or_too_long_is_an_error() -> None:
    with pytest.raises(RenderError, match="no list 'items'"):
        map_items("steps.a.items", {"a": '{"items": 3}'}, "", 1000, 10)
    with pytest.raises(RenderError, match="over max_items 2"):
        map_items("chunks", {}, "x" * 1000, 300, 2)
    assert map_items("steps.a.items", {"a": '{"items": [1, 2]}'}, "", 1000, 10) == [1, 2]


def test_step_ids_round_trip_and_other_ids_are_not_steps() -> None:
    assert step_of(step_id("abc", "extract")) == ("abc", "extract", None)
    assert step_of(step_id("abc", "claims", 3)) == ("abc", "claims", 3)
    assert step_of("0123abcd") is None and step_of("shadow-x") is None and step_of("a.b.c") is None
