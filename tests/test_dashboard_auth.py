"""Only operators reach the dashboard: the token, the session cookie, CSRF, and off without a token."""

import dataclasses
import re
import time
from urllib.parse import urlencode

import falcon.testing
import pytest

from service.app import create_app
from service.config import Config, ConfigError
from service.dashboard.auth import SESSION_TTL_S, OperatorAuth

TOKEN = "operator-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def form(**fields) -> dict:
    """Return simulate_* arguments that send `fields` as a url-encoded form."""
    return {"body": urlencode(fields), "content_type": "application/x-www-form-urlencoded"}


@pytest.fixture
def client(config):
    return falcon.testing.TestClient(create_app(dataclasses.replace(config, admin_token=TOKEN)))


def log_in(client) -> tuple[str, str]:
    """Log in through the form; return the session cookie and the page's CSRF token."""
    answer = client.simulate_post("/dashboard/login", **form(token=TOKEN, next="/dashboard/failures"))
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/failures"
    session = answer.cookies["vendorfetch_dashboard"].value
    page = client.simulate_get("/dashboard/failures", cookies={"vendorfetch_dashboard": session})
    return session, re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)


@pytest.mark.parametrize("method, path", [
    ("GET", "/dashboard"), ("GET", "/dashboard/api/overview"), ("GET", "/dashboard/login"),
    ("POST", "/dashboard/dead-letters/purge"), ("GET", "/dashboard/static/dashboard.js"),
])
def test_without_an_admin_token_the_dashboard_does_not_exist(config, method, path):
    client = falcon.testing.TestClient(create_app(config))
    assert client.simulate_request(method, path, headers=BEARER).status_code == 404


def test_a_page_without_credentials_redirects_to_the_login_form(client):
    answer = client.simulate_get("/dashboard/failures", query_string="vendor=sync")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Ffailures%3Fvendor%3Dsync"


@pytest.mark.parametrize("method, path, headers", [
    pytest.param("GET", "/dashboard/api/overview", {}, id="json-without-token"),
    pytest.param("GET", "/dashboard/api/overview", {"Authorization": "Bearer wrong-token-0123456789"}, id="json-wrong-token"),
    pytest.param("POST", "/dashboard/dead-letters/purge", {}, id="action-without-token"),
    pytest.param("GET", "/dashboard/api/scheduler", {"Cookie": "vendorfetch_dashboard=1.forged.abc"}, id="forged-cookie"),
])
def test_json_endpoints_and_actions_refuse_requests_without_the_token(client, method, path, headers):
    answer = client.simulate_request(method, path, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_the_bearer_token_opens_pages_and_endpoints_with_strict_headers(client):
    answer = client.simulate_get("/dashboard/api/overview", headers=BEARER)
    assert answer.status_code == 200 and set(answer.json) == {"at", "states", "queue", "vendors"}
    page = client.simulate_get("/dashboard", headers=BEARER)
    assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_a_wrong_token_at_the_login_form_is_refused(client):
    answer = client.simulate_post("/dashboard/login", **form(token="not-it"))
    assert answer.status_code == 401 and "not the operator token" in answer.text
    assert "vendorfetch_dashboard" not in answer.cookies


def test_login_sets_an_http_only_strict_cookie_that_does_not_hold_the_token(client):
    answer = client.simulate_post("/dashboard/login", **form(token=TOKEN, next="//evil.example/"))
    assert answer.headers["location"] == "/dashboard"  # never an open redirect
    cookie = answer.cookies["vendorfetch_dashboard"]
    assert cookie.http_only and cookie.same_site == "Strict" and cookie.path == "/dashboard"
    assert TOKEN not in cookie.value
    assert client.simulate_get("/dashboard/api/overview", cookies={"vendorfetch_dashboard": cookie.value}).status_code == 200


def test_a_session_post_without_the_csrf_token_is_refused(client):
    session, csrf = log_in(client)
    cookies = {"vendorfetch_dashboard": session}
    refused = client.simulate_post("/dashboard/dead-letters/purge", cookies=cookies, **form(csrf_token="0" * 64))
    assert refused.status_code == 403
    assert client.simulate_post("/dashboard/dead-letters/purge", cookies=cookies, **form()).status_code == 403
    accepted = client.simulate_post("/dashboard/dead-letters/purge", cookies=cookies, **form(csrf_token=csrf, next="/dashboard/failures"))
    assert accepted.status_code == 303
    assert accepted.headers["location"] == "/dashboard/failures?notice=purged&count=0"


def test_a_bearer_action_needs_no_csrf_token_and_answers_json(client):
    answer = client.simulate_post("/dashboard/dead-letters/purge", headers=BEARER)
    assert answer.status_code == 200 and answer.json == {"notice": "purged", "count": 0}


def test_logging_out_clears_the_cookie_and_ends_the_session_everywhere(client):
    session, csrf = log_in(client)
    other, _ = log_in(client)
    cookies = {"vendorfetch_dashboard": session}
    answer = client.simulate_post("/dashboard/logout", cookies=cookies, **form(csrf_token=csrf))
    assert answer.status_code == 303 and answer.cookies["vendorfetch_dashboard"].value == ""
    # A copy of the cookie kept elsewhere opens nothing now; another session lives on.
    assert client.simulate_get("/dashboard/api/overview", cookies=cookies).status_code == 401
    assert client.simulate_get("/dashboard/api/overview", cookies={"vendorfetch_dashboard": other}).status_code == 200


@pytest.mark.parametrize("path", [
    "/dashboard/failures/retry", "/dashboard/dead-letters/purge", "/dashboard/jobs/some-job/retry",
    "/dashboard/jobs/some-job/callback", "/dashboard/clients/revoke", "/dashboard/logout",
])
def test_every_action_refuses_a_csrf_token_of_another_session(client, path):
    session, _ = log_in(client)
    _, others_csrf = log_in(client)
    cookies = {"vendorfetch_dashboard": session}
    assert client.simulate_post(path, cookies=cookies, **form(csrf_token=others_csrf)).status_code == 403
    assert client.simulate_get("/dashboard/api/overview", cookies=cookies).status_code == 200  # nothing happened: still in


def test_sessions_expire_and_end_when_the_token_changes(redis_client):
    auth = OperatorAuth(TOKEN, redis_client)
    assert auth.session_valid(auth.new_session())
    old = f"{int(time.time()) - SESSION_TTL_S - 1}.someid"
    assert not auth.session_valid(f"{old}.{auth.sign(old)}")
    assert not OperatorAuth(TOKEN + "-rotated", redis_client).session_valid(auth.new_session())
    assert not auth.session_valid("ünïcode.cookie.välue")
    forged = f"{int(time.time())}.never-started"
    assert not auth.session_valid(f"{forged}.{auth.sign(forged)}")  # signed, but no such session was started


def test_a_short_admin_token_stops_the_start():
    with pytest.raises(ConfigError, match="ADMIN_TOKEN must be at least 16"):
        Config.from_env({"ENCRYPTION_KEY": "k", "ADMIN_TOKEN": "short"})
