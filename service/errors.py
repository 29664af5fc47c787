"""Errors of the service, mapped to HTTP in one place (service/app.py).

    VendorfetchError
    ├── JobNotFound          404  no job has this request_id
    ├── IdempotencyConflict  422  the Idempotency-Key was used with another request
    ├── IdempotencyInFlight  409  the first request with this Idempotency-Key is still being stored
    ├── UnstorableResult     422  the vendor's data cannot be stored (an integer over 64 bits, too large)
    ├── UnknownVendor        400/404  no vendor of that name (400 when pinned on submit)
    ├── BacklogFull          503  the vendor already has max_backlog jobs waiting (with Retry-After)
    │   └── ClientBacklogFull     429  the client already has its cap of jobs waiting for the vendor
    ├── Unauthenticated      401  no API key, or one that is unknown or revoked (AUTH=keys)
    ├── TooManyRequests      429  the client is over its request rate (with Retry-After and RateLimit headers)
    ├── JobFinished          409  the job ended before it could be cancelled
    ├── WebhookRejected      401/403/409  a webhook that must not change its job
    │   ├── WebhookUnauthorized   401  missing or invalid signature or token
    │   ├── WebhookWrongVendor    403  the job was sent to another vendor
    │   └── WebhookTooLate        409  the job already ended without this vendor's data

pymongo's ConnectionFailure (MongoDB unreachable) is answered 503 with Retry-After.
"""

from __future__ import annotations


class VendorfetchError(Exception):
    """Base class of every error the service raises on purpose."""


class JobNotFound(VendorfetchError):
    """No job has this request_id."""


class IdempotencyConflict(VendorfetchError):
    """An Idempotency-Key was used before with a different request."""


class IdempotencyInFlight(VendorfetchError):
    """The first request with this Idempotency-Key has not been stored yet."""


class UnstorableResult(VendorfetchError):
    """The vendor's data cannot be stored in MongoDB; storing it again will not help."""


class UnknownVendor(VendorfetchError):
    """The vendor registry has no vendor of that name."""


class BacklogFull(VendorfetchError):
    """Every vendor the job may go to already has as many jobs waiting as it may have."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientBacklogFull(BacklogFull):
    """The client has as many jobs waiting for the vendor as its own cap allows."""


class Unauthenticated(VendorfetchError):
    """The request carries no valid API key."""


class TooManyRequests(VendorfetchError):
    """The client sent more requests than its rate allows; `headers` say its limit."""

    def __init__(self, message: str, retry_after_s: int, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers


class JobFinished(VendorfetchError):
    """The job reached a final state other than cancelled before the client cancelled it."""


class WebhookRejected(VendorfetchError):
    """A webhook call that must not change its job."""

    status = "409 Conflict"


class WebhookUnauthorized(WebhookRejected):
    """The webhook's signature or token is missing or invalid."""

    status = "401 Unauthorized"


class WebhookWrongVendor(WebhookRejected):
    """The webhook came from a vendor the job was not sent to."""

    status = "403 Forbidden"


class WebhookTooLate(WebhookRejected):
    """The job already ended (timed out or failed) before this webhook came."""

    status = "409 Conflict"

