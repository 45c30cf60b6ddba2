"""The inbox page in headless Chromium: a person types an answer, clicks, and the producer receives it."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from fleet.api import create_api
from fleet.inbox import Inbox
from fleet.models import TaskResult

from .conftest import RunningFleet

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "inbox.png"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def fail_every_model(fleet: RunningFleet) -> None:
    """Every model of every provider answers 400: each chain is exhausted at once, no breaker opens."""
    models = {m for p in fleet.settings.providers.values() for m in p.models}
    fleet.mock_config(faults_by_model={m: {"bad_request": 1.0} for m in models})


@pytest.fixture
def api_url(clean_fleet: RunningFleet) -> Iterator[str]:
    """The API and inbox page served by uvicorn in a thread, against the test fleet, without auth."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_api(clean_fleet.settings, clean_fleet.redis_url, token="")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make test installs it)"
)
def test_a_person_resolves_an_escalation_in_the_browser(
    clean_fleet: RunningFleet, api_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    # Given two escalated jobs, one of them already claimed by bob
    fail_every_model(clean_fleet)
    client = clean_fleet.client
    mine = client.submit({"prompt": "Extract the invoice number from: 'Invoice INV-2291, due 3 May'",
                          "kind": "extract.invoice", "tier": "mini"})  # fmt: skip
    other = client.submit({"prompt": "Review the retry policy of our payment webhook consumer",
                           "kind": "code.review", "tier": "full"})  # fmt: skip
    esc = client.result(mine, timeout=30).escalation_id
    other_esc = client.result(other, timeout=30).escalation_id
    assert esc and other_esc
    inbox = Inbox(clean_fleet.settings, redis_url=clean_fleet.redis_url)
    inbox.claim(other_esc, "bob")
    inbox.close()
    # And a producer blocked waiting for the answer
    got: dict[str, TaskResult] = {}
    waiter = threading.Thread(target=lambda: got.update(r=client.result(mine, 60, until_answered=True)))
    waiter.start()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 1300})
            # When alice opens the inbox, types her name and an answer
            page.goto(f"{api_url}/inbox")
            card = page.locator(f'section.card[data-id="{esc}"]')
            card.wait_for(timeout=10_000)
            assert page.locator(f'section.card[data-id="{other_esc}"]').get_by_text("claimed by").count() == 1
            assert card.locator("table.attempts tbody tr").count() >= 1
            assert "bad_request" in card.inner_text()
            page.fill("#name", "alice")
            card.locator("textarea.answer").fill("INV-2291")
            page.screenshot(path=str(tmp_path / "inbox.png"), full_page=True)
            # The docs carry the page as people see it; refresh it on purpose, not on every run
            # (a test must not dirty the checkout): FLEET_TEST_UPDATE_SCREENSHOTS=1 make test.
            if os.environ.get("FLEET_TEST_UPDATE_SCREENSHOTS") == "1":
                shutil.copyfile(tmp_path / "inbox.png", DOCS_SCREENSHOT)
            # And clicks "Resolve"
            card.locator("button.resolve").click()
            page.locator(f'section.card[data-id="{esc}"]').wait_for(state="detached", timeout=10_000)
            page.screenshot(path=str(tmp_path / "inbox-after.png"), full_page=True)
        finally:
            browser.close()
    waiter.join(20)

    # Then the producer receives her answer, and the card left the inbox
    assert not waiter.is_alive()
    assert got["r"].status == "completed" and got["r"].answer == "INV-2291"
    assert got["r"].resolved_by == "human" and got["r"].resolver == "alice"
    assert (tmp_path / "inbox.png").stat().st_size > 10_000


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make test installs it)"
)
def test_a_person_retries_a_filtered_set_of_escalations_in_the_browser(
    clean_fleet: RunningFleet, api_url: str
) -> None:
    from playwright.sync_api import sync_playwright

    # Given an outage: three jobs of one kind and one of another escalated
    fail_every_model(clean_fleet)
    client = clean_fleet.client
    bulk = [
        client.submit({"prompt": f"Rename v{n} to w{n}", "kind": "test.bulk", "tier": "mini"})
        for n in range(3)
    ]
    keep = client.submit({"prompt": "Rename k to j", "kind": "test.keep", "tier": "mini"})
    assert {client.result(t, timeout=30).status for t in [*bulk, keep]} == {"escalated"}
    clean_fleet.mock_config(faults_by_model={})  # the outage is over

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 1300})
            # When a person filters the inbox to one kind and retries all that match
            page.goto(f"{api_url}/inbox")
            page.locator("section.card").first.wait_for(timeout=10_000)
            assert "bad_request 4" in page.locator("#by-reason").inner_text()  # the counts per reason
            page.fill("#name", "alice")
            page.fill("#f-kind", "test.bulk")
            assert page.locator("section.card").count() == 3
            page.click("#bulk-retry")
            # Then the page asks to confirm how many will move, and moves them when confirmed
            page.locator("#confirm").wait_for(state="visible", timeout=10_000)
            assert page.inner_text("#confirm-text") == "retry 3 open escalation(s)?"
            page.click("#confirm-go")
            page.locator("#bulk-msg.ok").wait_for(timeout=20_000)
            assert page.inner_text("#bulk-msg").startswith("retry: 3 moved")
        finally:
            browser.close()
    assert {client.result(t, timeout=30).status for t in bulk} == {"completed"}
    assert client.result(keep, timeout=5).status == "escalated"  # outside the filter: left alone
