"""The console as `make run` starts it (scripts/run_console.py: migrations,
the administrator, the demo content, web, worker, beat and the local node
agent), used in Chromium the way a new user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import DEMO_STORE
from tests.support.agents import wait_for
from tests.support.browser import CHROMIUM_FLAGS, chromium_path
from tests.support.s3_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a-new-users-password"


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    if not (DEMO_STORE / "smollm2-135m-instruct" / ".complete").exists():
        pytest.fail("The demo content is missing: `make test` builds it (make demo).")
    var = tmp_path_factory.mktemp("var")
    (var / "demo-store").symlink_to(DEMO_STORE.resolve())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        PLUGBOARD_VAR_DIR=str(var),
        PLUGBOARD_PORT=str(port),
        PLUGBOARD_ADMIN_PASSWORD=PASSWORD,
        PLUGBOARD_NODE_NAME="laptop",
    )
    log = open(var / "run.log", "wb")  # noqa: SIM115 (the console writes to it for its whole life)
    process = subprocess.Popen(
        [sys.executable, "scripts/run_console.py"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (var / "run.log").read_text()
        try:
            return requests.get(url + "/login/", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=120, every=0.5, what="the console to answer")
    yield url, var
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(30)
    kill_servers_under(var)


def kill_servers_under(var: Path) -> None:
    """Model servers run in sessions of their own and outlive the console: stop the ones this console started."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "vllm.entrypoints" in cmdline and str(var) in cmdline:
            try:
                os.killpg(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_in_page(page, expression: str, *, timeout: float = 15) -> None:
    """Waits until `expression` is true in the page. Playwright's wait_for_function evaluates its predicate
    with eval inside the page, which the console's Content-Security-Policy (no unsafe-eval) refuses;
    page.evaluate is not subject to it."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{expression} was still false after {timeout} s"
        page.wait_for_timeout(200)


@pytest.fixture(scope="module")
def page(console):
    from playwright.sync_api import sync_playwright

    url, _ = console
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Dashboard").wait_for()
        yield page
        browser.close()


def test_the_demo_model_and_adapters_are_registered_ready_and_fit(console, page):
    url, _ = console
    page.goto(url + "/models/")
    for name in ("smollm2-135m-instruct", "pirate", "json-answer", "robot"):
        assert page.locator("tr", has_text=name).locator("[data-status]").inner_text() == "Ready", name
    page.get_by_role("link", name="smollm2-135m-instruct").click()
    page.get_by_text("These adapters fit this model").wait_for()
    assert page.locator('[data-verdict="fits"]').count() == 3


def test_the_cluster_page_shows_the_local_node_its_cpu_runtime_and_cache(console, page):
    url, var = console
    page.goto(url + "/cluster/")
    node = page.locator('[data-node="laptop"]')
    node.wait_for(timeout=60_000)
    page.locator('[data-node="laptop"][data-status="online"]').wait_for(timeout=30_000)
    assert "CPU 0" in node.locator('[data-accelerator="cpu0"]').inner_text()
    assert "vllm-cpu" in node.locator('[data-runtime="vllm-cpu"]').inner_text()
    assert str(var / "cache") in node.inner_text()


def test_a_model_fetched_to_the_local_node_shows_as_cached(console, page):
    url, _ = console
    page.goto(url + "/models/")
    page.get_by_role("link", name="pirate").click()
    page.get_by_role("button", name="Fetch to node").click()
    page.locator('#artifact-nodes [data-cache-status="ready"]').wait_for(timeout=60_000)
    page.goto(url + "/cluster/")
    assert "pirate" in page.locator('[data-node="laptop"]').inner_text()


def test_the_wizard_deploys_the_demo_model_with_adapters_and_the_page_shows_it_ready(console, page):
    url, var = console
    page.goto(url + "/deployments/")
    page.get_by_role("link", name="Deploy", exact=True).click()
    page.get_by_label("smollm2-135m-instruct").check()
    page.fill("#id_name", "demo")
    page.get_by_role("button", name="Next").click()
    page.locator('[data-adapter="pirate"] input[type=checkbox]').check()
    page.locator('[data-adapter="json-answer"] input[type=checkbox]').check()
    page.get_by_role("button", name="Next").click()
    assert page.locator('tr[data-fits="true"]').count() >= 1, "the local CPU fits the demo model"
    # Only the fields that apply show: automatic placement on a CPU node hides the node picker and GPU fields.
    assert page.locator("#field-node").is_hidden() and page.locator("#field-gpu_memory_utilization").is_hidden()
    assert page.locator("#field-kv_cache_gib").is_visible()
    page.get_by_label("Manual").check()
    page.locator("#field-node").wait_for(state="visible")
    page.get_by_label("Automatic").check()
    page.locator("#field-node").wait_for(state="hidden")
    # The estimate follows the fields as they are typed.
    page.fill("#id_kv_cache_gib", "100")
    page.locator('#preflight tr[data-fits="false"]').wait_for(timeout=10_000)
    page.fill("#id_kv_cache_gib", "1")
    page.locator('#preflight tr[data-fits="true"]').wait_for(timeout=10_000)
    page.get_by_role("button", name="Next").click()
    assert "vLLM 0.32.0" in page.locator("#runtimes").inner_text(), "the runtime installed on the node"
    page.get_by_role("button", name="Next").click()
    assert "demo:pirate" in page.locator("#command").inner_text()
    page.get_by_role("button", name="Deploy", exact=True).click()

    page.locator('#live [data-status="ready"]').wait_for(timeout=240_000)
    assert page.locator('[data-adapter="pirate"][data-state="loaded"]').count() == 1
    assert page.locator('[data-adapter="json-answer"][data-state="loaded"]').count() == 1
    page.on("dialog", lambda dialog: dialog.accept())

    # Editing an argument redeploys it as revision 2, adapters and all.
    page.get_by_role("link", name="Edit").click()
    page.fill("#id_max_model_len", "1024")
    page.get_by_role("button", name="Save and redeploy").click()
    assert "Saved as revision 2" in page.locator("body").inner_text()
    page.locator('#live [data-status="restarting"]').wait_for(timeout=60_000)
    page.locator('#live [data-status="ready"]').wait_for(timeout=240_000)
    page.reload()
    assert "--max-model-len 1024" in page.locator("#command-line").inner_text()
    assert page.locator('[data-adapter="pirate"][data-state="loaded"]').count() == 1

    # The Inference tab (opened by "Try it") answers as an adapter, then as the base and the adapter side by side.
    page.get_by_role("link", name="Try it", exact=True).click()
    page.wait_for_url("**/inference/?deployment=*")
    page.select_option("#target", "demo:pirate")
    page.fill("#p-temperature", "0")
    page.fill("#p-max_tokens", "40")
    page.fill("#prompt", "What is the capital of France?")
    page.get_by_role("button", name="Send").click()
    pirate = page.locator('[data-model="demo:pirate"] .chat-assistant')
    pirate.locator(".chat-figures", has_text="tokens/s").wait_for(timeout=120_000)
    assert "Arr" in pirate.locator(".chat-body").inner_text()
    assert "completion tokens" in pirate.locator(".chat-figures").inner_text()

    page.get_by_role("button", name="Clear").click()
    page.check("#compare")
    page.check('#compare-targets input[value="demo"]')
    page.check('#compare-targets input[value="demo:pirate"]')
    page.check('#compare-targets input[value="demo:json-answer"]')
    page.fill("#prompt", "What is the capital of France?")
    page.get_by_role("button", name="Send").click()
    for model in ("demo", "demo:pirate", "demo:json-answer"):
        page.locator(f'[data-model="{model}"] .chat-figures', has_text="tokens/s").wait_for(timeout=120_000)
    base = page.locator('[data-model="demo"] .chat-assistant .chat-body').inner_text()
    assert "Paris" in base and "Arr" not in base
    assert "Arr" in page.locator('[data-model="demo:pirate"] .chat-assistant .chat-body').inner_text()
    assert (
        page.locator('[data-model="demo:json-answer"] .chat-assistant .chat-body').inner_text().lstrip().startswith("{")
    )

    page.screenshot(path=str(var / "playground.png"), full_page=True)  # to look at when this test fails
    # Replies are Markdown, rendered without letting any of the model's HTML through.
    rendered = page.evaluate(
        "PlugboardMarkdown.render('<img src=x onerror=alert(1)> **bold** [a](javascript:alert(1)) [b](https://x.org)')"
    )
    assert "<img" not in rendered and "&lt;img" in rendered and "<strong>bold</strong>" in rendered
    assert 'href="javascript' not in rendered and 'href="https://x.org"' in rendered

    page.get_by_role("button", name="View code").click()
    assert "/v1/chat/completions" in page.locator("#code-text").inner_text()
    page.locator('[data-code-tab="python"]').click()
    assert "from openai import OpenAI" in page.locator("#code-text").inner_text()
    page.locator('[data-code-tab="javascript"]').click()
    assert 'import OpenAI from "openai"' in page.locator("#code-text").inner_text()

    # The Usage page shows that conversation, attributed to the person who had it.
    page.get_by_role("link", name="Usage").click()
    page.get_by_role("link", name="Per adapter").click()
    # The gateway writes usage once a second: the page may need a second look.
    wait_for(
        lambda: page.reload() or page.locator('[data-usage-group="demo:pirate"]').count(), timeout=10, every=0.5,
        what="the conversation on the Usage page",
    )  # fmt: skip
    assert "playground: admin" in page.locator("body").inner_text()

    # A copy of pirate under another name, registered as a user would, to have a fourth adapter.
    page.goto(url + "/models/register/")
    page.get_by_label("Adapter").check()
    page.fill("#id_name", "pirate-2")
    page.select_option("#id_connection", label="Demo store")
    page.fill("#id_location", "adapters/pirate")
    page.get_by_role("button", name="Save").click()
    page.locator('#status [data-status="ready"]').wait_for(timeout=60_000)

    # The defaults gave two slots: a third and a fourth adapter attach to the live server without a restart.
    page.goto(url + "/deployments/")
    page.get_by_role("link", name="demo").click()
    starts = page.locator("#live li", has_text="Started the server").count()
    for adapter in ("robot", "pirate-2"):
        page.select_option('select[name="adapter"]', label=f"{adapter} (r=8)")
        page.get_by_role("button", name="Attach without restart").click()
        page.locator(f'#live [data-adapter="{adapter}"][data-state="loaded"]').wait_for(timeout=120_000)
    # Two live refreshes later every adapter still has its Detach button, and no server was started again.
    page.evaluate("window.swaps = 0; document.body.addEventListener('htmx:afterRequest', () => window.swaps++)")
    wait_in_page(page, "window.swaps >= 4")  # the adapters' section and the log, twice each
    assert page.locator("#live [data-adapter] button", has_text="Detach").count() == 4
    assert page.locator("#live li", has_text="Started the server").count() == starts, "attaching restarted nothing"

    # The log opens at its newest line and leaves out the console's own health checks until asked for them.
    lines = page.locator("#log-lines")
    lines.wait_for(timeout=15_000)
    wait_in_page(
        page, "(el => el.scrollTop + el.clientHeight >= el.scrollHeight - 2)(document.getElementById('log-lines'))"
    )
    assert "GET /health" not in lines.inner_text() and "health check" in page.locator("#log-summary").inner_text()
    page.check("#log-health-checks")
    page.locator("#log-lines", has_text="GET /health").wait_for(timeout=15_000)

    # Rolling back to revision 1 (before the edit's --max-model-len 1024) redeploys it as revision 3.
    page.locator('#revisions [data-revision="1"]').get_by_role("button", name="Roll back to this revision").click()
    assert "Rolled back to revision 1 as revision 3" in page.locator("body").inner_text()
    page.locator('#live [data-status="restarting"]').wait_for(timeout=60_000)
    page.locator('#live [data-status="ready"]').wait_for(timeout=240_000)
    page.reload()
    assert "--max-model-len 1024" not in page.locator("#command-line").inner_text()
    assert "max_model_len back to its default (was 1024)" in page.locator('#revisions [data-revision="3"]').inner_text()
    assert page.locator('#live [data-adapter="pirate-2"][data-state="loaded"]').count() == 1, "adapters stay"

    page.get_by_role("button", name="Stop").click()
    page.locator('#live [data-status="stopped"]').wait_for(timeout=60_000)
    # Stopped, the page still shows the timeline and the adapters (waiting for the server), and the log.
    assert page.locator("#live li", has_text="Stopped").count() >= 1
    assert page.locator('#live [data-adapter="robot"][data-state="waiting"]').count() == 1
    assert page.locator("#log-lines").count() == 1
