"""Vendor calls honour the proxy settings of the worker's environment, read once per vendor URL."""

import pytest

from tests.scripted_vendor import RECORD, ScriptedVendor
from vendors.client import VendorUnavailable, call_vendor, environment_settings, vendor_session
from vendors.registry import Vendor

# Nothing listens on port 1: a call that reaches this URL without the proxy is refused.
UNREACHABLE = "http://127.0.0.1:1/fetch"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def proxy(monkeypatch):
    """A forward proxy that answers every call itself, named by HTTP_PROXY; the settings cache starts empty."""
    forward = ScriptedVendor()
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", forward.url.removesuffix("/fetch"))
    environment_settings.cache_clear()
    yield forward
    environment_settings.cache_clear()
    forward.close()


def call(url: str):
    return call_vendor(vendor_session(), Vendor(name="v", mode="sync", url=url), "r1", {"name": "Ann"}, "http://127.0.0.1/hook")


def test_a_vendor_call_goes_through_the_environments_proxy(proxy):
    reply = call(UNREACHABLE)
    assert reply.data == {"request_id": "r1", **RECORD}
    assert [request_id for _, request_id in proxy.calls] == ["r1"]


def test_no_proxy_sends_a_vendor_call_direct(proxy, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(VendorUnavailable, match="could not be reached"):
        call(UNREACHABLE)
    assert proxy.calls == []


def test_the_environment_is_read_once_per_vendor_url(proxy, monkeypatch):
    call(UNREACHABLE)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # too late for this URL: its settings were read
    call(UNREACHABLE)
    assert len(proxy.calls) == 2
