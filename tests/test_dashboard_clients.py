"""The dashboard's Clients page: jobs by state, each vendor's calls and line against the weighted share, keys by prefix only, revoking one."""

import dataclasses
import re

import falcon.testing
import pytest

from service.app import create_app
from tests.conftest import with_registry
from tests.test_dashboard_auth import BEARER, TOKEN, form, log_in


@pytest.fixture
def client(config, clients):
    return falcon.testing.TestClient(create_app(dataclasses.replace(config, admin_token=TOKEN)))


def test_the_clients_page_shows_jobs_by_state_recent_starts_and_keys_by_prefix_only(client, clients, store):
    _, key = clients.add("acme", weight=3, backlog_caps={"sync": 10})
    store.create("a", "sync", {"name": "n"}, client="acme")
    store.create("b", "sync", {"name": "n"}, client="acme")
    store.claim("b", "m1")
    store.create("c", "async", {"name": "n"})  # the public client's
    data = client.simulate_get("/dashboard/api/clients", headers=BEARER).json
    acme = next(c for c in data["clients"] if c["name"] == "acme")
    assert acme["weight"] == 3 and acme["backlog_caps"] == {"sync": 10}
    assert acme["states"]["queued"] == 1 and acme["states"]["processing"] == 1 and acme["states"]["cancelled"] == 0
    assert acme["starts"] == [{"vendor": "sync", "last_minute": 1, "last_hour": 1, "share_last_minute": 1.0,
                               "share_last_hour": 1.0, "in_line": 0, "weighted_share": None}]
    assert acme["keys"] == [{"prefix": key[:11], "created_at": acme["keys"][0]["created_at"], "revoked_at": None}]
    public = next(c for c in data["clients"] if c["name"] == "public")
    assert public["states"]["queued"] == 1 and public["keys"] == []
    page = client.simulate_get("/dashboard/clients", headers=BEARER).text
    assert key[:11] in page and key not in page and "Revoke" in page


def test_the_clients_page_sets_each_clients_jobs_in_line_against_its_weighted_share(config, clients, tmp_path):
    slow = with_registry(config, tmp_path, 'vendors.slow = {mode = "sync", url = "http://127.0.0.1:9/f", rate_limit = "1/minute"}',
                         admin_token=TOKEN)
    api = falcon.testing.TestClient(create_app(slow))
    for name, weight in (("heavy", 3), ("light", 1)):
        _, key = clients.add(name, weight=weight)
        for _ in range(3):  # the first job of all starts at once; the others wait in line
            assert api.simulate_post("/jobs", json={"name": "n"}, headers={"Authorization": f"Bearer {key}"}).status_code == 202
    rows = {c["name"]: c["starts"] for c in api.simulate_get("/dashboard/api/clients", headers=BEARER).json["clients"]}
    assert [(r["vendor"], r["in_line"], r["weighted_share"]) for r in rows["heavy"]] == [("slow", 2, 0.75)]
    assert [(r["vendor"], r["in_line"], r["weighted_share"]) for r in rows["light"]] == [("slow", 3, 0.25)]
    assert "75 %" in api.simulate_get("/dashboard/clients", headers=BEARER).text


def test_an_operator_revokes_a_key_from_the_clients_page(client, clients):
    _, key = clients.add("acme")
    session, csrf = log_in(client)
    answer = client.simulate_post("/dashboard/clients/revoke", cookies={"vendorfetch_dashboard": session},
                                  **form(csrf_token=csrf, prefix=key[:11], next="/dashboard/clients"))
    assert answer.status_code == 303 and answer.headers["location"].startswith("/dashboard/clients?notice=revoked")
    assert clients.by_key(key) is None
    unknown = client.simulate_post("/dashboard/clients/revoke", headers=BEARER, **form(prefix="vf_unknown"))
    assert unknown.status_code == 404 and "no active key" in unknown.json["description"]
    page = client.simulate_get("/dashboard/clients", cookies={"vendorfetch_dashboard": session}).text
    assert re.search(r"revoked \d{4}-\d\d-\d\d", page)
