"""Authenticate vendor webhooks: Standard Webhooks signatures, per-job tokens, or nothing.

| webhook_auth | what a call must carry                                              |
| ------------ | ------------------------------------------------------------------- |
| signature    | webhook-id/-timestamp/-signature headers signed with a vendor secret |
| token        | the `token` query parameter our callback_url carried                 |
| none         | nothing (development only; start-up and /readyz warn)                |
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from typing import Mapping

import redis
import standardwebhooks

from service.errors import WebhookRejected, WebhookUnauthorized
from vendors.registry import Vendor

#: The route async vendors call back; the worker hands each vendor its job's URL on it.
WEBHOOK_ROUTE = "/vendor-webhook/{vendor}"
SIGNATURE_TOLERANCE_S = 5 * 60
# A replayed webhook-id is recognised for as long as its timestamp could still pass, plus margin.
REPLAY_WINDOW_S = 2 * SIGNATURE_TOLERANCE_S + 60


class WebhookAuth:
    """Issue callback tokens and verify incoming webhooks."""

    def __init__(self, encryption_key: str, seen_ids: redis.Redis) -> None:
        # Derived keys, so a callback token never reveals anything about the payload key.
        self.token_keys = [
            hashlib.sha256(b"vendorfetch callback token\x00" + key.strip().encode()).digest()
            for key in encryption_key.split(",") if key.strip()
        ]
        self.seen_ids = seen_ids

    def callback_token(self, request_id: str, vendor: str) -> str:
        """Return the token that lets `vendor` complete job `request_id` and no other."""
        return self._token(self.token_keys[0], request_id, vendor)

    def callback_url(self, public_url: str, vendor: str, request_id: str) -> str:
        """Return the URL `vendor` calls back for job `request_id`, carrying the job's token."""
        path = WEBHOOK_ROUTE.format(vendor=vendor)
        return f"{public_url}{path}?token={self.callback_token(request_id, vendor)}"

    def verify(self, vendor: Vendor, request_id: str, body: bytes, headers: Mapping[str, str], token: str | None) -> None:
        """Raise WebhookUnauthorized unless the call carries what the vendor's mode requires."""
        if vendor.webhook_auth == "signature":
            self._verify_signature(vendor, body, headers)
        elif vendor.webhook_auth == "token":
            if not token or not any(
                hmac.compare_digest(token.encode(), self._token(key, request_id, vendor.name).encode()) for key in self.token_keys
            ):
                raise WebhookUnauthorized(f"missing or invalid callback token for vendor {vendor.name!r}")

    def _verify_signature(self, vendor: Vendor, body: bytes, headers: Mapping[str, str]) -> None:
        lowered = {key.lower(): value for key, value in headers.items()}
        for secret in vendor.webhook_secrets:
            try:
                standardwebhooks.Webhook(secret).verify(body, lowered, json_parse=False)
                break
            except (standardwebhooks.WebhookVerificationError, ValueError, binascii.Error) as error:
                reason = str(error) or "invalid signature headers"
        else:
            raise WebhookUnauthorized(f"webhook signature rejected: {reason}")
        if self.seen_ids.exists(self._seen_key(vendor, lowered["webhook-id"])):
            raise WebhookRejected(f"webhook-id {lowered['webhook-id']!r} was already received; replay refused")

    def remember(self, vendor: Vendor, headers: Mapping[str, str]) -> None:
        """Record a signed webhook's id once it took effect, so a replay is refused.

        Recorded only after success: a vendor retrying a delivery that failed here (say, MongoDB
        was down) must get through.
        """
        if vendor.webhook_auth == "signature":
            webhook_id = {key.lower(): value for key, value in headers.items()}["webhook-id"]
            self.seen_ids.set(self._seen_key(vendor, webhook_id), 1, ex=REPLAY_WINDOW_S)

    @staticmethod
    def _seen_key(vendor: Vendor, webhook_id: str) -> str:
        return f"webhook:seen:{vendor.name}:{webhook_id}"

    @staticmethod
    def _token(key: bytes, request_id: str, vendor: str) -> str:
        return hmac.new(key, f"{request_id}\x00{vendor}".encode(), hashlib.sha256).hexdigest()
