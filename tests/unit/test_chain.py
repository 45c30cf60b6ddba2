"""The chain's policy per outcome, with scripted providers (a pure unit: no HTTP here)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleet.chain import Chain
from fleet.errors import AuthError, ContextLengthExceeded, ProviderError, RateLimited, ServerError
from fleet.models import TaskRequest
from fleet.providers import ChatRequest, ChatResponse
from fleet.settings import Settings, load_settings

Step = Callable[[ChatRequest], ChatResponse]


def ok(text: str = "fine", finish: str = "stop") -> Step:
    return lambda req: ChatResponse(text=text, finish_reason=finish, input_tokens=10, output_tokens=5)


def fail(exc: ProviderError) -> Step:
    def step(req: ChatRequest) -> ChatResponse:
        raise exc

    return step


class Scripted:
    def __init__(self, name: str, steps: list[Step]) -> None:
        self.name = name
        self.steps = steps
        self.calls: list[str] = []

    def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls.append(request.model)
        return self.steps.pop(0)(request)


@pytest.fixture
def settings() -> Settings:
    return load_settings(env={})


LINKS = [("openai", "gpt-4.1-mini"), ("groq", "llama-3.3-70b-versatile"), ("anthropic", "claude-sonnet-4-5")]


def make(settings: Settings, **scripts: list[Step]) -> tuple[Chain, dict[str, Scripted], list[float]]:
    providers = {name: Scripted(name, steps) for name, steps in scripts.items()}
    slept: list[float] = []
    return Chain(settings, providers=providers, sleep=slept.append), providers, slept  # type: ignore[arg-type]


def test_first_link_answers(settings: Settings) -> None:
    chain, _, _ = make(settings, openai=[ok("hello")])
    out = chain.run(LINKS, TaskRequest(prompt="hi"))
    assert out.ok and out.answer == "hello" and out.link_index == 0
    assert [a.outcome for a in out.attempts] == ["ok"]
    assert out.cost_usd == pytest.approx(settings.model("openai", "gpt-4.1-mini").cost(10, 5))


def test_retryable_outcome_retries_same_link_then_moves_on(settings: Settings) -> None:
    chain, _providers, slept = make(
        settings, openai=[fail(ServerError("boom", status=500)), fail(ServerError("boom", status=500))],
        groq=[ok("from groq")],
    )  # fmt: skip
    out = chain.run(LINKS, TaskRequest(prompt="hi"))
    assert out.answer == "from groq" and out.link_index == 1
    assert [a.outcome for a in out.attempts] == ["server_error", "server_error", "ok"]
    assert len(slept) == 1 and 0 < slept[0] <= settings.retry.backoff_max_s


def test_short_retry_after_waits_long_one_moves_on(settings: Settings) -> None:
    chain, _, slept = make(settings, openai=[fail(RateLimited("slow down", retry_after=0.5)), ok("later")])
    assert chain.run(LINKS, TaskRequest(prompt="hi")).answer == "later"
    assert slept == [0.5]
    chain, _, slept = make(settings, openai=[fail(RateLimited("slow down", retry_after=60))], groq=[ok("g")])
    out = chain.run(LINKS, TaskRequest(prompt="hi"))
    assert out.answer == "g" and slept == []


@pytest.mark.parametrize(
    ("step", "code"),
    [
        (ok(""), "empty_answer"),
        (ok("cut", finish="length"), "truncated"),
    ],
)
def test_bad_answers_move_to_the_next_link(settings: Settings, step: Step, code: str) -> None:
    chain, _, slept = make(settings, openai=[step], groq=[ok("good")])
    out = chain.run(LINKS, TaskRequest(prompt="hi"))
    assert out.answer == "good"
    assert [a.outcome for a in out.attempts] == [code, "ok"]
    assert slept == []


def test_schema_mismatch_moves_on(settings: Settings) -> None:
    schema = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
    chain, _, _ = make(
        settings, openai=[ok('{"total": "ten"}')], groq=[ok("not json")], anthropic=[ok('{"total": 10}')]
    )
    out = chain.run(LINKS, TaskRequest(prompt="hi", response_schema=schema))
    assert out.answer == '{"total": 10}'
    assert [a.outcome for a in out.attempts] == ["schema_mismatch", "schema_mismatch", "ok"]


def test_auth_skips_every_link_of_that_provider(settings: Settings) -> None:
    links = [("openai", "gpt-4.1-mini"), ("openai", "gpt-4.1"), ("anthropic", "claude-sonnet-4-5")]
    chain, providers, _ = make(settings, openai=[fail(AuthError("bad key", status=401))], anthropic=[ok("a")])
    out = chain.run(links, TaskRequest(prompt="hi"))
    assert out.answer == "a"
    assert providers["openai"].calls == ["gpt-4.1-mini"]


def test_context_length_skips_links_with_no_larger_window(settings: Settings) -> None:
    links = [("groq", "llama-3.3-70b-versatile"), ("groq", "llama-3.1-8b-instant"), ("openai", "gpt-4.1")]
    chain, providers, _ = make(
        settings, groq=[fail(ContextLengthExceeded("too long", status=400))], openai=[ok("big")]
    )
    out = chain.run(links, TaskRequest(prompt="hi"))
    assert out.answer == "big"
    assert providers["groq"].calls == ["llama-3.3-70b-versatile"]


def test_all_links_down_returns_the_whole_history(settings: Settings) -> None:
    down = [fail(ServerError("down", status=503))] * 2
    chain, _, _ = make(settings, openai=list(down), groq=list(down), anthropic=list(down))
    out = chain.run(LINKS, TaskRequest(prompt="hi"))
    assert not out.ok and out.reason == "server_error"
    assert len(out.attempts) == 6
    assert {a.link for a in out.attempts} == {f"{p}:{m}" for p, m in LINKS}


def test_cost_ceiling_escalates_instead_of_spending_more(settings: Settings) -> None:
    chain, _, _ = make(settings, openai=[ok("", "stop")], groq=[ok("never")])
    out = chain.run(LINKS, TaskRequest(prompt="hi", max_cost_usd=1e-9))
    assert not out.ok and out.reason == "cost_ceiling"
    assert len(out.attempts) == 1


def test_policy_from_config_changes_what_an_outcome_does() -> None:
    settings = load_settings(env={"FLEET_RETRY__POLICY__TRUNCATED": '"retry"'})
    chain, _, slept = make(settings, openai=[ok("cut", finish="length"), ok("whole")])
    out = chain.run(LINKS, TaskRequest(prompt="hi"))
    assert out.answer == "whole" and out.link_index == 0
    assert len(slept) == 1


def cached(tokens: int) -> Step:
    return lambda req: ChatResponse(
        text="from cache",
        finish_reason="stop",
        input_tokens=1500,
        output_tokens=5,
        cached_input_tokens=tokens,
    )


def test_a_link_with_a_warm_cache_for_the_kind_goes_first_when_no_dearer_and_healthy(
    settings: Settings,
) -> None:
    cheap = [("openai", "gpt-4.1-mini"), ("groq", "llama-3.1-8b-instant")]
    dear = [("openai", "gpt-4.1-mini"), ("anthropic", "claude-sonnet-4-5")]
    kind = "support.refund"
    chain, _, _ = make(
        settings, openai=[fail(ServerError("boom", status=500))] * 4, groq=[cached(1280)],
        anthropic=[cached(1280)],
    )  # fmt: skip
    # Given groq answered a job of the kind from its prompt cache (openai was failing)
    assert chain.run(cheap, TaskRequest(prompt="hi", kind=kind)).answer == "from cache"
    # Then groq, warm and no dearer, goes first for that kind, and only for that kind
    assert chain.affinity.ordered(cheap, kind) == cheap[::-1]
    assert (
        chain.affinity.ordered(cheap, "other.kind") == cheap and chain.affinity.ordered(cheap, None) == cheap
    )
    # A warm link that costs more per token is not moved up
    assert chain.run(dear, TaskRequest(prompt="hi", kind=kind)).answer == "from cache"
    assert chain.affinity.ordered(dear, kind) == dear


def test_a_warm_link_that_just_failed_is_not_moved_up(settings: Settings) -> None:
    cheap = [("openai", "gpt-4.1-mini"), ("groq", "llama-3.1-8b-instant")]
    chain, _, _ = make(
        settings, openai=[fail(ServerError("boom", status=500))] * 2 + [ok()],
        groq=[cached(1280), fail(ServerError("boom", status=500)), fail(ServerError("boom", status=500))],
    )  # fmt: skip
    chain.run(cheap, TaskRequest(prompt="hi", kind="k"))
    assert chain.affinity.ordered(cheap, "k") == cheap[::-1]
    # groq first now, and it fails: the walk goes on to openai, and groq is not preferred any more
    assert chain.run(chain.affinity.ordered(cheap, "k"), TaskRequest(prompt="hi", kind="k")).answer == "fine"
    assert chain.affinity.ordered(cheap, "k") == cheap


def test_each_thread_has_its_own_http_client_and_close_closes_them_all(settings: Settings) -> None:
    import threading

    chain = Chain(settings)
    mine = chain.client
    assert chain.client is mine and chain.provider("openai") is chain.provider("openai")
    theirs: list[object] = []
    thread = threading.Thread(target=lambda: theirs.extend([chain.client, chain.provider("openai")]))
    thread.start()
    thread.join()
    assert theirs[0] is not mine and theirs[1] is not chain.provider("openai")
    chain.close()
    assert mine.is_closed and theirs[0].is_closed


def test_a_429_whose_headers_say_the_quota_is_spent_paces_the_model(settings: Settings) -> None:
    from fleet import keys
    from fleet.limits import Bucket, MemoryLimiter
    from fleet.providers.base import Quota, QuotaPart

    # Given a 429 whose rate-limit headers say 0 of 20 requests are left, whole again in 5 s
    limited = RateLimited("slow down", retry_after=60)
    limited.quota = Quota(requests=QuotaPart(remaining=0, reset_s=5.0, limit=20))
    limiter = MemoryLimiter()
    chain = Chain(settings, providers={"openai": Scripted("openai", [fail(limited)])}, limiter=limiter)  # type: ignore[dict-item]
    chain.run(LINKS[:1], TaskRequest(prompt="hi"))
    # Then the model's rpm bucket is booked ahead: no token for a while (the config's 5000 rpm)
    rpm = settings.model("openai", "gpt-4.1-mini").rpm
    assert rpm is not None
    rate = rpm / 60.0
    bucket = Bucket(keys.bucket("rpm", "openai:gpt-4.1-mini"), rate, burst=max(1.0, rate))
    assert limiter.fill(bucket) == 0
