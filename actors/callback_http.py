"""POST a client callback: only to an address the egress policy allows, within a total deadline.

The host is resolved once and every address checked; the connection goes to the checked
address (no second lookup, so DNS rebinding cannot switch it), while the Host header, TLS SNI
and the certificate check keep the URL's name. A timer shuts the socket at the deadline, however
slowly the client's server trickles its answer; at most `max_body_bytes` of the answer are read,
and a redirect is an answer like any other, never followed.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.egress import EgressPolicy, resolve


class CallbackUnreachable(Exception):
    """The client's endpoint could not be reached, or did not answer within the deadline."""


@dataclass(frozen=True)
class CallbackAnswer:
    status: int
    retry_after: str | None


class _PinnedConnection(http.client.HTTPConnection):
    """Connect to the one address the policy checked for this connection's host."""

    policy: EgressPolicy

    def connect(self) -> None:
        addresses = resolve(self.host, self.port)
        self.policy.check(addresses, self.host)
        self.sock = socket.create_connection((str(addresses[0]), self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection, _PinnedConnection):
    """TLS over the pinned connection, verified against the URL's host name."""


def post_callback(
    url: str, body: bytes, headers: dict[str, str], policy: EgressPolicy, deadline_s: float, max_body_bytes: int,
) -> CallbackAnswer:
    """POST `body` to `url` and return the answer's status; raise CallbackUnreachable or EgressRefused."""
    parts = urlsplit(url)
    kind = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedConnection
    extra = {"context": ssl.create_default_context()} if parts.scheme == "https" else {}
    connection = kind(parts.hostname, parts.port, timeout=deadline_s, **extra)
    connection.policy = policy
    expired = threading.Event()
    watchdog = threading.Timer(deadline_s, _shut, args=(connection, expired))
    watchdog.start()
    try:
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        response = connection.getresponse()
        response.read(max_body_bytes)  # at most this much; the rest is never read
    except (OSError, http.client.HTTPException) as error:
        late = " within the deadline" if expired.is_set() else ""
        raise CallbackUnreachable(f"client callback not answered{late}: {type(error).__name__}") from error
    finally:
        watchdog.cancel()
        connection.close()
    if expired.is_set():  # cut short at the deadline, whatever the part that came seemed to say
        raise CallbackUnreachable("client callback not answered within the deadline")
    return CallbackAnswer(response.status, response.getheader("Retry-After"))


def _shut(connection: http.client.HTTPConnection, expired: threading.Event) -> None:
    """End a delivery that ran out of time: any read or write still waiting fails at once."""
    expired.set()
    if connection.sock is not None:
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
