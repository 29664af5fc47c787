"""Call a vendor over HTTP and turn what happens into a reply or a vendor error.

    VendorError
    ├── VendorUnavailable     timeout, connection error or 5xx: worth retrying
    │   └── VendorRateLimited 429: wait `retry_after_s`, then retry
    └── VendorRejected        a redirect, any other 4xx, or an unusable answer (too large, too
                              deep, not a JSON object): retrying will not help

A call never follows a redirect (the decrypted payload must reach the vendor's URL and no other)
and reads at most the vendor's `max_body_bytes` of the answer. It goes through the proxy and trusts
the CA bundle the environment names (`HTTPS_PROXY`, `NO_PROXY`, `REQUESTS_CA_BUNDLE`, ...), read
once per vendor URL.
"""

from __future__ import annotations

import email.utils
import functools
import time
from dataclasses import dataclass
from typing import Any

import orjson
import requests

from vendors.payloads import MAX_JSON_DEPTH, nested_deeper_than
from vendors.quota import Quota, parse_quota
from vendors.registry import Vendor

CHUNK_BYTES = 64 * 1024


class VendorError(Exception):
    """A vendor call did not give us what we need."""


class VendorUnavailable(VendorError):
    """The vendor timed out, could not be reached, or answered 5xx."""


class VendorRateLimited(VendorUnavailable):
    """The vendor answered 429."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class VendorRejected(VendorError):
    """The vendor refused the request (4xx) or answered something unusable."""


@dataclass(frozen=True)
class VendorReply:
    """What a vendor answered: its data (sync) or only an acknowledgement (async)."""

    status_code: int
    data: dict[str, Any] | None
    quota: Quota | None = None  # what the vendor's rate-limit headers say is left


def vendor_session() -> requests.Session:
    """Return a session for vendor calls: `call_vendor` gives it the environment's settings, so it reads none itself."""
    session = requests.Session()
    # requests would otherwise read the environment (and look for a .netrc file) on every call.
    session.trust_env = False
    return session


@functools.cache
def environment_settings(url: str) -> dict[str, Any]:
    """Return the proxies and CA bundle the environment sets for calls to `url`, read as requests reads them."""
    settings = requests.Session().merge_environment_settings(url, {}, None, None, None)
    return {"proxies": settings["proxies"], "verify": settings["verify"]}


def call_vendor(
    session: requests.Session, vendor: Vendor, request_id: str, payload: dict[str, Any], callback_url: str,
) -> VendorReply:
    """POST the job to the vendor and return its reply, or raise a VendorError."""
    body = {"request_id": request_id, "payload": payload, "callback_url": callback_url}
    try:
        with session.post(
            vendor.url, json=body, timeout=vendor.timeout_s, allow_redirects=False, stream=True, **environment_settings(vendor.url),
        ) as response:
            content = read_at_most(response, vendor.max_body_bytes)
    except requests.Timeout as error:
        raise VendorUnavailable(f"{vendor.name} did not answer within {vendor.timeout_s:g} s") from error
    except requests.RequestException as error:
        raise VendorUnavailable(f"{vendor.name} could not be reached: {type(error).__name__}") from error
    return _reply(vendor, response, content)


def read_at_most(response: requests.Response, limit: int) -> bytes:
    """Read a streamed response's body, stopping one byte past `limit`: the caller tells a larger one by its length."""
    content = bytearray()
    for chunk in response.iter_content(CHUNK_BYTES):
        content += chunk
        if len(content) > limit:
            break
    return bytes(content[:limit + 1])


def _reply(vendor: Vendor, response: requests.Response, content: bytes) -> VendorReply:
    status = response.status_code
    quota = parse_quota(response.headers)
    if status == 429:
        retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after_s is None and quota is not None:
            retry_after_s = quota.reset_s
        raise VendorRateLimited(f"{vendor.name} answered 429 Too Many Requests", retry_after_s)
    if status >= 500:
        raise VendorUnavailable(f"{vendor.name} answered {status}")
    if status >= 400:
        raise VendorRejected(f"{vendor.name} rejected the request with {status}")
    if status >= 300:
        raise VendorRejected(f"{vendor.name} answered {status}; redirects are not followed")
    if len(content) > vendor.max_body_bytes:
        raise VendorRejected(f"{vendor.name} answered more than {vendor.max_body_bytes} bytes")
    if vendor.is_async:
        return VendorReply(status, None, quota)
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise VendorRejected(f"{vendor.name} answered {status} without a JSON object")
    if nested_deeper_than(data, MAX_JSON_DEPTH):
        raise VendorRejected(f"{vendor.name} answered JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return VendorReply(status, data, quota)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Read a Retry-After header (delay in seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
