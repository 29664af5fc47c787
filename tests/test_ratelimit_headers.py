"""Reading a vendor's own rate-limit headers."""

import pytest
from requests.structures import CaseInsensitiveDict

from vendors.quota import Quota, parse_quota

NOW = 1_800_000_000.0


@pytest.mark.parametrize("headers, expected", [
    pytest.param({"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "30"}, Quota(7, 30.0), id="x-ratelimit-seconds"),
    pytest.param({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 12)}, Quota(0, 12.0), id="x-ratelimit-unix-time"),
    pytest.param({"RateLimit-Remaining": "3", "RateLimit-Reset": "5"}, Quota(3, 5.0), id="ietf-draft-pair"),
    pytest.param({"RateLimit": '"default";r=50;t=30'}, Quota(50, 30.0), id="ietf-structured"),
    pytest.param({"RateLimit": '"burst";r=9;t=1, "daily";r=2;t=3600'}, Quota(2, 3600.0), id="ietf-stricter-policy"),
    pytest.param({"RateLimit": '"a";r=5;t=10', "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "2"}, Quota(1, 2.0), id="stricter-of-both"),
])
def test_quota_headers_are_read_in_every_common_form(headers, expected):
    assert parse_quota(CaseInsensitiveDict(headers), now=NOW) == expected


@pytest.mark.parametrize("headers", [
    pytest.param({}, id="none"),
    pytest.param({"X-RateLimit-Remaining": "7"}, id="no-reset"),
    pytest.param({"X-RateLimit-Remaining": "many", "X-RateLimit-Reset": "30"}, id="not-a-number"),
    pytest.param({"RateLimit": '"default";q=50'}, id="structured-without-r-and-t"),
])
def test_missing_or_unreadable_quota_headers_announce_nothing(headers):
    assert parse_quota(CaseInsensitiveDict(headers), now=NOW) is None
