"""A person at a laptop, in real Chromium: signs in, finds the demo model and
what fits it, registers a model from S3 and watches it become ready."""

from __future__ import annotations

import os

import pytest

from conftest import DEMO_STORE
from registry.demo import DEMO_BASE, demo_register
from registry.tests.helpers import s3_connection
from tests.support import artifacts as build
from tests.support.browser import CHROMIUM_FLAGS, chromium_path
from tests.support.factories import PASSWORD

pytestmark = pytest.mark.demo


@pytest.fixture
def page(live_server):
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package.")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes are still synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        yield context.new_page()
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def sign_in(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/models/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/models/")


def test_a_new_user_finds_the_demo_model_and_the_adapters_that_fit(cast, live_server, page):
    demo_register(workspace=cast.team, store=DEMO_STORE)
    sign_in(page, live_server, "member")

    row = page.locator("tr", has_text=DEMO_BASE)
    assert row.locator("[data-status]").inner_text() == "Ready"
    row.get_by_role("link", name=DEMO_BASE).click()
    page.get_by_text("These adapters fit this model").wait_for()
    fits = page.locator('[data-verdict="fits"]')
    assert fits.count() >= 2
    assert page.locator('[data-verdict="does-not-fit"]').count() == 0


def test_registering_from_s3_shows_the_model_turn_ready(cast, live_server, page, s3_server, celery_worker_thread):
    s3_server.put_files("models", "browser/tiny", build.base_model_files())
    s3_connection(cast.team, s3_server)
    sign_in(page, live_server, "member")

    page.get_by_role("link", name="Register").first.click()
    page.fill("#id_name", "tiny-from-s3")
    page.fill("#id_location", "browser/tiny")
    page.get_by_role("button", name="Save").click()

    # The page polls with htmx until inspection is over, then reloads itself.
    page.locator('[data-status="ready"]').wait_for(timeout=30_000)
    page.get_by_text("These adapters fit this model").wait_for()
    assert "model.safetensors" in page.content()
