import pytest

from vendors.registry import RegistryError, Vendor, load_registry, parse_rate_limit, parse_registry


@pytest.mark.parametrize("text, expected", [
    pytest.param("60/minute", (60, 60.0), id="per-minute"),
    pytest.param("10/second", (10, 1.0), id="per-second"),
    pytest.param(" 1000 / hours ", (1000, 3600.0), id="plural-and-spaces"),
    pytest.param("20000/day", (20000, 86400.0), id="per-day"),
])
def test_rate_limits_parse_into_count_and_period(text, expected):
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize("text", ["60", "0/minute", "60/week", "ten/second"])
def test_malformed_rate_limits_are_refused(text):
    with pytest.raises(RegistryError, match="rate_limit"):
        parse_rate_limit(text)


def test_a_vendor_may_list_several_limits_and_the_slowest_sets_the_pace():
    vendor = Vendor(name="v", mode="sync", url="http://v/fetch", rate_limit="10/second, 5000/hour, 20000/day")
    assert vendor.limits == ((10, 1.0), (5000, 3600.0), (20000, 86400.0))
    assert vendor.limit == (20000, 86400.0) and vendor.burst == 10
    assert vendor.max_backlog == int(3600 * 20000 / 86400)  # what it takes in max_wait_s


@pytest.mark.parametrize("settings, error", [
    pytest.param({"rate_limit": "10/second, 20/second"}, "period twice", id="a-period-twice"),
    pytest.param({"rate_limit": "10/second,"}, "rate_limit", id="an-empty-limit"),
    pytest.param({"rate_limit": "10/second, 5000/hour", "burst": 11}, "smallest rate limit's 10", id="burst-above-a-limit"),
    pytest.param({"max_in_flight": 0}, "at least 1", id="no-call-in-flight"),
])
def test_limit_settings_that_cannot_work_are_refused_with_the_reason(settings, error):
    table = {"mode": "sync", "url": "http://v/fetch", **settings}
    with pytest.raises(RegistryError, match=error):
        parse_registry({"vendors": {"v": table}}, "test")


def test_builtin_registry_has_both_mock_vendors_and_an_unsigned_async_one():
    registry = load_registry()
    assert {name: vendor.mode for name, vendor in registry.vendors.items()} == {"sync": "sync", "async": "async"}
    assert registry.unsigned_webhook_vendors() == ["async"]


def test_round_robin_skips_disabled_vendors():
    registry = parse_registry({"vendors": {
        "a": {"mode": "sync", "url": "http://a/fetch"},
        "b": {"mode": "sync", "url": "http://b/fetch", "enabled": False},
        "c": {"mode": "async", "url": "http://c/fetch"},
    }}, "test")
    assert [registry.choose().name for _ in range(4)] == ["a", "c", "a", "c"]


def test_vendor_with_a_secret_defaults_to_signature_auth_and_hides_it_from_repr():
    registry = parse_registry({"vendors": {"v": {"mode": "async", "url": "http://v/", "webhook_secret": "whsec_c2VjcmV0"}}}, "t")
    vendor = registry.get("v")
    assert vendor.webhook_auth == "signature"
    assert "whsec_" not in repr(vendor)


def test_vendor_without_a_secret_defaults_to_token_auth():
    registry = parse_registry({"vendors": {"v": {"mode": "async", "url": "http://v/"}}}, "t")
    assert registry.get("v").webhook_auth == "token"


def test_a_vendors_burst_defaults_to_its_whole_limit():
    registry = parse_registry({"vendors": {"v": {"mode": "sync", "url": "http://v/", "rate_limit": "30/minute"}}}, "t")
    assert registry.get("v").burst == 30


@pytest.mark.parametrize("table, message", [
    pytest.param({"mode": "push", "url": "http://v/"}, "mode", id="bad-mode"),
    pytest.param({"mode": "sync", "url": "ftp://v/"}, "url", id="bad-url"),
    pytest.param({"mode": "async", "url": "http://v/", "webhook_auth": "signature"}, "needs a webhook_secret", id="signature-without-secret"),
    pytest.param({"mode": "sync", "url": "http://v/", "colour": "red"}, "unknown setting", id="unknown-key"),
    pytest.param({"mode": "sync", "url": "http://v/", "timeout_s": "soon"}, "vendors.v", id="bad-number"),
    pytest.param({"mode": "sync", "url": "http://v/", "rate_limit": "5/second", "burst": 6}, "burst must be between 1 and", id="burst-over-limit"),
    pytest.param({"mode": "sync", "url": "http://v/", "burst": 0}, "burst must be between 1 and", id="burst-zero"),
])
def test_invalid_vendor_tables_name_the_problem(table, message):
    with pytest.raises(RegistryError, match=message):
        parse_registry({"vendors": {"v": table}}, "test")


def test_a_missing_registry_file_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="cannot read vendor registry"):
        load_registry(str(tmp_path / "nope.toml"))
