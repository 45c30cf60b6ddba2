"""Provider quotas: the rate-limit headers read from an answer, the pace they set on a model's
bucket, and the mock's SIMULATED quotas that send them."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from fleet.limits import Bucket, pace_floor_ms
from fleet.providers._http import read_quota
from fleet.providers.base import QuotaPart
from fleet.providers.mock_quota import MockQuota, Quotas, quota_headers

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def test_openai_headers_give_requests_and_tokens_with_their_limits() -> None:
    headers = httpx.Headers({
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "1m2.5s",
    })  # fmt: skip
    quota = read_quota(headers, now=NOW)
    assert quota is not None
    assert quota.requests == QuotaPart(remaining=499, reset_s=pytest.approx(0.12), limit=500)
    assert quota.tokens == QuotaPart(remaining=29000, reset_s=pytest.approx(62.5), limit=30000)


def test_anthropic_headers_give_reset_times_as_seconds_from_now() -> None:
    headers = httpx.Headers({
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": "2026-12-02T12:00:04.500Z",
    })  # fmt: skip
    quota = read_quota(headers, now=NOW)
    assert quota is not None and quota.tokens is None
    assert quota.requests == QuotaPart(remaining=3, reset_s=pytest.approx(4.5), limit=50)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-ratelimit-remaining-requests": "many", "x-ratelimit-reset-requests": "1s"},
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "soon"},
        {"anthropic-ratelimit-requests-remaining": "5"},  # no reset
    ],
)
def test_missing_or_bad_headers_are_no_quota_not_an_error(headers: dict[str, str]) -> None:
    assert read_quota(httpx.Headers(headers), now=NOW) is None


def test_a_quota_with_room_leaves_the_bucket_alone() -> None:
    # 5000 rpm configured; the provider has 4990 of 5000 left, whole again in 120 ms
    rpm = Bucket("b", 5000 / 60, burst=5000 / 60)
    assert pace_floor_ms(rpm, remaining=4990, reset_s=0.12, limit=5000, reserve=0.1) == 0


def test_a_nearly_spent_quota_books_the_bucket_so_the_provider_rate_is_kept() -> None:
    # The fleet thinks 600 rpm (10/s, burst 10); the provider takes 20 per 10 s and needs 5 s more
    rpm = Bucket("b", 10.0, burst=10.0)
    floor = pace_floor_ms(rpm, remaining=10, reset_s=5.0, limit=20, reserve=0.1)
    # within those 5 s the bucket then grants (5000 + 900 - floor) / 100 = 18 = 20 less the reserve
    assert (5000 + rpm.tolerance_ms - floor) / rpm.emission_ms == pytest.approx(18)
    # without a limit header, only what is left counts: 10 less 1 (the reserve)
    floor = pace_floor_ms(rpm, remaining=10, reset_s=5.0, limit=None, reserve=0.1)
    assert (5000 + rpm.tolerance_ms - floor) / rpm.emission_ms == pytest.approx(9)


def test_the_mock_quota_refuses_when_spent_refills_and_its_headers_read_back() -> None:
    quotas, quota = Quotas(), MockQuota(requests=3, tokens=1000, window_s=6)
    admitted = [quotas.admit("m", quota, tokens=100, now=10.0) for _ in range(3)]
    assert all(a.allowed for a in admitted)
    refused = quotas.admit("m", quota, tokens=100, now=10.0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(2.0)
    # one request's worth refills in 2 s
    assert quotas.admit("m", quota, tokens=100, now=12.0).allowed
    for wire in ("openai", "anthropic"):
        headers = quota_headers(wire, admitted[-1], NOW.timestamp())
        read = read_quota(httpx.Headers(headers), now=NOW)
        assert read is not None and read.requests is not None and read.tokens is not None
        assert (read.requests.remaining, read.requests.limit) == (0, 3)
        assert read.requests.reset_s == pytest.approx(6.0, abs=0.01)
        assert (read.tokens.remaining, read.tokens.limit) == (700, 1000)
