"""Production settings: `manage.py check --deploy` is clean with the production environment, cookies
are Secure and HttpOnly over HTTPS, every answer carries a Content-Security-Policy that no page of the
console breaks (no inline scripts or handlers in any template), and request bodies are bounded."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from tests.support.factories import UserFactory
from tests.support.web import UvicornServer, console_env

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "SECRET_KEY": "k" * 20 + Fernet.generate_key().decode(),
    "PLUGBOARD_SECRETS_KEY": Fernet.generate_key().decode(),
    "PLUGBOARD_HTTPS": "1",
    "ALLOWED_HOSTS": "console.example.com",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py as an operator runs it: outside pytest and DEBUG, with only the environment given."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTEST_VERSION", "DEBUG", *PRODUCTION)}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_the_production_environment(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", PLUGBOARD_VAR_DIR=str(tmp_path), **PRODUCTION)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_when_https_is_not_on(tmp_path):
    plain_http = {**PRODUCTION, "PLUGBOARD_HTTPS": "0"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", PLUGBOARD_VAR_DIR=str(tmp_path), **plain_http)

    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


@pytest.fixture(scope="module")
def https_console(django_db_setup, django_db_blocker, tmp_path_factory):
    """The console as production runs it behind a proxy that terminates TLS."""
    with django_db_blocker.unblock():
        env = console_env(PLUGBOARD_HTTPS="1", PLUGBOARD_BEHIND_PROXY="1")
    server = UvicornServer(
        "config.asgi:application", log_path=tmp_path_factory.mktemp("console") / "web.log", env=env
    ).start()
    yield server
    server.stop()


def test_over_https_cookies_are_secure_and_browsers_are_told_to_keep_to_https(https_console):
    page = requests.get(https_console.url + "/login/", headers={"X-Forwarded-Proto": "https"}, timeout=10)

    assert page.status_code == 200
    assert page.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    csrf = next(c for c in page.cookies if c.name == "csrftoken")
    assert csrf.secure
    plain = requests.get(https_console.url + "/login/", allow_redirects=False, timeout=10)
    assert plain.status_code == 301 and plain.headers["Location"].startswith("https://")


@pytest.mark.django_db(transaction=True)
def test_the_session_cookie_is_secure_and_httponly_over_https(https_console, settings):
    from django.conf import global_settings

    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS  # as the console process hashes
    user = UserFactory(username="https-user")
    user.set_password("a long enough password")
    user.save()
    https = {"X-Forwarded-Proto": "https"}
    csrf = requests.get(https_console.url + "/login/", headers=https, timeout=10).cookies["csrftoken"]
    # requests keeps a Secure cookie from plain http (the proxy's side of TLS here): it is sent by hand.
    signed_in = requests.post(
        https_console.url + "/login/",
        data={"username": "https-user", "password": "a long enough password", "csrfmiddlewaretoken": csrf},
        headers={**https, "Cookie": f"csrftoken={csrf}", "Referer": https_console.url.replace("http:", "https:")},
        allow_redirects=False, timeout=10,
    )  # fmt: skip

    cookie = signed_in.headers.get("Set-Cookie", "")
    assert signed_in.status_code == 302, signed_in.text[:500]
    assert "sessionid=" in cookie and "HttpOnly" in cookie and "Secure" in cookie


# Content-Security-Policy ------------------------------------------------------------------------------

TEMPLATE_DIRS = [ROOT / "templates", *ROOT.glob("*/templates")]
INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an inline event handler (on...=)"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
    (re.compile(r"\bhx-on", re.I), "an hx-on handler (htmx evaluates it as inline script)"),
    (re.compile(r"<style[\s>]", re.I), "an inline <style> block"),
]


def test_no_template_has_inline_script_handlers_or_style_blocks():
    found = []
    for folder in TEMPLATE_DIRS:
        for template in folder.rglob("*.html"):
            text = template.read_text()
            found += [f"{template.relative_to(ROOT)}: {what}" for pattern, what in INLINE if pattern.search(text)]

    assert found == []


def test_the_policy_forbids_inline_scripts_plugins_and_framing():
    policy = dict(d.split(" ", 1) for d in settings.PLUGBOARD_CSP.split("; "))

    assert policy["script-src"] == "'self'" and policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'self'"
    # Style attributes stay allowed (progress bars set their width), <style> blocks do not.
    assert policy["style-src"] == "'self'" and policy["style-src-attr"] == "'unsafe-inline'"


MAIN_PAGES = ["/", "/models/", "/models/register/", "/connections/", "/connections/new/", "/deployments/",
              "/deployments/new/", "/inference/", "/inference/keys/", "/inference/usage/", "/cluster/", "/settings/",
              "/api/v1/docs/", "/admin/"]  # fmt: skip


def test_every_main_page_carries_the_policy_and_the_security_headers(cast):
    client = Client()
    client.force_login(cast.admin)

    for path in ["/login/", *MAIN_PAGES]:
        response = Client().get(path) if path == "/login/" else client.get(path, follow=True)
        assert response.status_code == 200, path
        assert response["Content-Security-Policy"] == settings.PLUGBOARD_CSP, path
        assert response["X-Content-Type-Options"] == "nosniff", path
        assert response["X-Frame-Options"] == "DENY", path
        body = response.content.decode()
        inline = [m.group(0) for m in re.finditer(r"<script(?![^>]*\bsrc=)[^>]*>", body) if "json" not in m.group(0)]
        assert inline == [], (path, inline)
        assert not re.search(r"\son[a-z]+\s*=\s*[\"']", body), path


def test_swagger_ui_starts_from_a_script_url_not_an_inline_script(cast):
    client = Client()
    client.force_login(cast.admin)

    page = client.get("/api/v1/docs/").content.decode()
    script = client.get("/api/v1/docs/?script=")

    assert "<style>" not in page and 'src="/api/v1/docs/?script=' in page
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content


# Request bodies ---------------------------------------------------------------------------------------


def test_a_json_body_over_the_limit_is_refused_by_the_api_with_413(cast, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    api = APIClient()
    api.force_authenticate(cast.admin)

    huge = api.post("/api/v1/workspaces/", json.dumps({"name": "x" * 20_000}), content_type="application/json")
    fits = api.post("/api/v1/workspaces/", json.dumps({"name": "Fits"}), content_type="application/json")

    assert huge.status_code == 413 and "over the API's limit of 10000 bytes" in huge.json()["detail"]
    assert fits.status_code == 201


def test_a_multipart_body_over_the_limit_is_refused_by_the_api_with_413(cast, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    api = APIClient()
    api.force_authenticate(cast.admin)

    huge = api.post("/api/v1/workspaces/", {"name": "Big", "file": io.BytesIO(b"x" * 20_000)}, format="multipart")
    fits = api.post("/api/v1/workspaces/", {"name": "Small"}, format="multipart")

    assert huge.status_code == 413 and "over the API's limit of 10000 bytes" in huge.json()["detail"]
    assert fits.status_code == 201


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_over_the_gateways_limit_is_refused_with_413(console, cast):
    from inference.services import inference_key_create

    _, key = inference_key_create(workspace=cast.team, name="big")

    def chunks():
        for _ in range(100):
            yield b"x" * 1024  # 100 KiB, no Content-Length: the gateway counts what arrives

    response = requests.post(
        console.url + "/v1/chat/completions", data=chunks(), headers={"Authorization": f"Bearer {key}"}, timeout=30
    )

    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


@pytest.fixture(scope="module")
def small_body_console(django_db_setup, django_db_blocker, tmp_path_factory):
    """A console (uvicorn) that takes request bodies up to 64 KiB outside the gateway."""
    with django_db_blocker.unblock():
        env = console_env(PLUGBOARD_MAX_BODY_BYTES=str(64 * 1024))
    server = UvicornServer(
        "config.asgi:application", log_path=tmp_path_factory.mktemp("console") / "web.log", env=env
    ).start()
    yield server
    server.stop()


def test_the_console_refuses_a_large_body_before_buffering_it(small_body_console):
    url = small_body_console.url + "/api/v1/workspaces/"
    declared = requests.post(url, data=b"x" * 100_000, headers={"Content-Type": "application/json"}, timeout=10)

    def chunks():
        for _ in range(100):
            yield b"x" * 1024  # 100 KiB, no Content-Length: counted as it arrives

    chunked = requests.post(url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    small = requests.post(url, data=b"{}", headers={"Content-Type": "application/json"}, timeout=10)

    for refused in (declared, chunked):
        assert refused.status_code == 413
        assert refused.json()["detail"] == "The request body is over the console's limit of 65536 bytes."
    assert small.status_code == 401  # within the limit: on to authentication
    page = requests.post(small_body_console.url + "/login/", data=b"x" * 100_000, timeout=10)
    assert page.status_code == 413


# In a real browser ---------------------------------------------------------------------------------


@pytest.mark.demo
def test_chromium_reports_no_policy_violation_on_the_consoles_pages(cast, live_server):
    from playwright.sync_api import sync_playwright

    from registry.demo import demo_register
    from tests.support.browser import CHROMIUM_FLAGS, chromium_path
    from tests.support.factories import PASSWORD

    demo_register(workspace=cast.team, store=Path(settings.VAR_DIR) / "demo-store")
    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package.")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
    messages: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
            page = browser.new_page()
            page.on("console", lambda m: messages.append(f"{page.url}: {m.type}: {m.text}"))
            page.on("dialog", lambda dialog: dialog.accept())  # data-confirm asks before a revoke
            page.goto(live_server.url + "/login/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(live_server.url + "/")
            for url in MAIN_PAGES:
                page.goto(live_server.url + url)
                page.wait_for_load_state("networkidle")
            page.goto(live_server.url + "/api/v1/docs/")
            page.locator(".swagger-ui .info .title").wait_for()  # its start-up script ran
            page.goto(live_server.url + "/settings/")
            page.fill("#id_name", "browser")
            page.get_by_role("button", name="Create token").click()
            page.locator("#new-token").wait_for()
            page.locator("#tokens tr", has_text="browser").get_by_role("button", name="Revoke").click()
            page.get_by_text("Revoked the token “browser”").wait_for()
            browser.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)

    violations = [m for m in messages if "Content Security Policy" in m or "Refused to" in m]
    assert violations == []
