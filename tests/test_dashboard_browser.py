"""The dashboard in a real browser (Debian's Chromium driven by Playwright) over the real processes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from devtools.stack import Stack, free_ports, service_env, wait_until
from tests.conftest import with_database
from tests.scripted_vendor import ScriptedVendor, served

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    missing = "Chromium is not installed and could not be (make test runs apt-get install chromium)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):  # CI must test the dashboard: it never skips it
        raise RuntimeError(f"{missing}; CI cannot run without it")
    pytest.skip(missing, allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")

# As root Chromium needs --no-sandbox; the others keep it from calling hosts it cannot reach here.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "browser-test-operator-token-0123456789"
DATABASE = "dashboard_browser"
PASSWORD = "browser-test-password"
REGISTRY = """
[vendors.sync]
mode = "sync"
url = "http://127.0.0.1:{sync_port}/fetch"
rate_limit = "6000/minute"

[vendors.paced]
mode = "sync"
url = "http://127.0.0.1:{sync_port}/fetch"
rate_limit = "60/minute"

[vendors.flaky]
mode = "sync"
url = "{flaky_url}"
rate_limit = "6000/minute"
max_retries = 0
breaker_failures = 0
"""


def rejected(_request_id: str) -> tuple[int, dict[str, str]]:
    return 400, {}


@pytest.fixture(scope="module")
def flaky():
    vendor = ScriptedVendor()
    yield vendor
    vendor.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, mongodb_uri, mongo_client, flaky):
    folder = tmp_path_factory.mktemp("dashboard")
    api_port, sync_port = free_ports(2)
    registry = folder / "vendors.toml"
    registry.write_text(REGISTRY.format(sync_port=sync_port, flaky_url=flaky.url))
    env = service_env(redis_url, with_database(mongodb_uri, DATABASE), registry, api_port)
    stack = Stack({**env, "ADMIN_TOKEN": TOKEN, "KEEP_FAILED_PAYLOADS": "true",
                   "SWEEP_INTERVAL_S": "1", "CLOCK_LEASE_S": "3"}, folder)
    try:
        stack.start_mock("sync", sync_port)
        stack.start_api(api_port)
        stack.start_worker(threads=8)
        stack.start_clock()
        stack.url = f"http://127.0.0.1:{api_port}"
        yield stack
    finally:
        stack.stop()
        mongo_client.drop_database(DATABASE)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def operator(browser, stack):
    """Give a page logged in through the form, in a context of its own."""
    context = browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/dashboard")
    page.get_by_label("Operator token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard")
    yield page
    context.close()


def submit(stack, vendor: str) -> str:
    answer = requests.post(f"{stack.url}/jobs", params={"vendor": vendor}, timeout=5,
                           json={"name": "Ann", "email": "ann@example.com", "password": PASSWORD})
    assert answer.status_code == 202, answer.text
    return answer.json()["request_id"]


def status_of(stack, request_id: str) -> str:
    return requests.get(f"{stack.url}/jobs/{request_id}", timeout=5).json()["status"]


def test_without_the_token_the_dashboard_is_refused(browser, stack):
    context = browser.new_context(base_url=stack.url)
    page = context.new_page()
    page.goto("/dashboard/failures")
    assert "/dashboard/login" in page.url
    page.get_by_label("Operator token").fill("not-the-operator-token")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "That is not the operator token."
    assert page.request.get("/dashboard/api/overview").status == 401
    context.close()


def test_a_job_submitted_through_the_api_appears_and_completes(operator, stack):
    request_id = submit(stack, "sync")
    operator.get_by_label("Find a job").fill(request_id)
    operator.keyboard.press("Enter")
    operator.wait_for_url(f"**/dashboard/jobs/{request_id}")
    playwright.expect(operator.locator("#job-status")).to_have_text("complete", timeout=15_000)
    playwright.expect(operator.locator(".timeline li").last).to_contain_text("sync answered 200")
    assert PASSWORD not in operator.content()


def test_a_failing_vendors_jobs_are_listed_and_a_retry_completes(operator, stack, flaky):
    flaky.answer = rejected
    request_id = submit(stack, "flaky")
    wait_until(lambda: status_of(stack, request_id) == "failed", 15, "the flaky job to fail")
    operator.goto("/dashboard/failures")
    operator.get_by_label("Vendor").select_option("flaky")
    operator.get_by_role("button", name="Filter").click()
    row = operator.locator("tr", has_text=request_id)
    playwright.expect(row).to_contain_text("flaky rejected the request with 400")
    flaky.answer = served
    row.get_by_role("button", name=f"Retry job {request_id}").click()
    playwright.expect(operator.get_by_role("status")).to_have_text("Retried 1 job(s); they are queued again.")
    operator.goto(f"/dashboard/jobs/{request_id}")
    playwright.expect(operator.locator("#job-status")).to_have_text("complete", timeout=15_000)
    playwright.expect(operator.locator(".timeline")).to_contain_text("retried by an operator")


def test_the_overview_under_load_shows_backlog_and_throughput(operator, stack, flaky):
    flaky.answer = rejected
    for vendor, count in (("paced", 90), ("sync", 40), ("flaky", 10)):
        for _ in range(count):
            submit(stack, vendor)
    operator.goto("/dashboard")
    paced = operator.locator("tr", has_text="60/minute")
    playwright.expect(paced.locator('[data-bind="backlog"]')).not_to_have_text("0", timeout=10_000)
    playwright.expect(operator.locator(".chart polyline.submitted")).to_have_count(1, timeout=20_000)
    playwright.expect(operator.locator('[data-bind="states.failed"]')).not_to_have_text("0")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    operator.screenshot(path=artifacts / "dashboard-overview.png", full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(artifacts / "dashboard-overview.png", ROOT / "docs" / "dashboard.png")
    operator.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
    assert operator.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    operator.screenshot(path=artifacts / "dashboard-phone.png", full_page=True)


def test_the_keyboard_reaches_the_skip_link_first(operator):
    operator.goto("/dashboard/scheduler")
    operator.keyboard.press("Tab")
    assert operator.evaluate("document.activeElement.textContent") == "Skip to content"
    playwright.expect(operator.locator('[data-bind="leader"]')).not_to_have_text("—", timeout=10_000)
