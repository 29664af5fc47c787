"""Sign webhook bodies the way a vendor does, with Standard Webhooks headers."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timezone

import standardwebhooks


def new_secret(seed: str) -> str:
    """Return a `whsec_` secret derived from `seed`."""
    return "whsec_" + base64.b64encode(seed.encode().ljust(32, b"-")).decode()


def signed_headers(secret: str, raw: bytes, msg_id: str | None = None, at: datetime | None = None) -> dict[str, str]:
    """Return the headers of a webhook call carrying `raw`, signed with `secret`."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(timezone.utc)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": standardwebhooks.Webhook(secret).sign(msg_id, at, raw.decode()),
    }
