"""POST a client callback: only to an address the egress policy allows, within a total deadline.

The host is resolved once and every address checked; the connection goes to the checked
address (no second lookup, so DNS rebinding cannot switch it), while the Host header, TLS SNI
and the certificate check keep the URL's name. The deadline covers the whole delivery: the
lookup waits at most the time left, the connection is made with the time left, and a timer shuts
the connection (TLS handshake included) when time runs out, however slowly the client's server
trickles. At most `max_body_bytes` of the answer's body are read, and a redirect is an answer
like any other, never followed.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.egress import EgressPolicy, resolve

#: Host lookups run here, so that a slow resolver costs a delivery no more than its time left.
_lookups = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback-dns")


class CallbackUnreachable(Exception):
    """The client's endpoint could not be reached, or did not answer within the deadline."""


@dataclass(frozen=True)
class CallbackAnswer:
    status: int
    retry_after: str | None


class _Delivery:
    """One delivery's deadline and the connection it may cut."""

    def __init__(self, policy: EgressPolicy, deadline_s: float) -> None:
        self.policy = policy
        self.ends_at = time.monotonic() + deadline_s
        self.expired = threading.Event()
        self.connected: tuple[int, int] | None = None  # the descriptor and family: TLS takes the socket object over
        self.lock = threading.Lock()  # the timer never touches a descriptor the delivery has closed
        self.timer = threading.Timer(deadline_s, self.cut)

    def time_left_s(self) -> float:
        left = self.ends_at - time.monotonic()
        if left <= 0 or self.expired.is_set():
            raise socket.timeout("the delivery's deadline passed")
        return left

    def connect(self, host: str, port: int) -> socket.socket:
        """Resolve `host` within the time left, check every address, and connect to the first."""
        try:
            addresses = _lookups.submit(resolve, host, port).result(timeout=self.time_left_s())
        except LookupTimeout:
            raise socket.timeout(f"looking up {host} took longer than the delivery's deadline") from None
        self.policy.check(addresses, host)
        sock = socket.create_connection((str(addresses[0]), port), self.time_left_s())
        with self.lock:
            self.connected = (sock.fileno(), sock.family)
        if self.expired.is_set():  # the timer fired before it could see the socket
            sock.close()
            raise socket.timeout("the delivery's deadline passed")
        return sock

    def cut(self) -> None:
        """End a delivery that ran out of time: any read or write still waiting fails at once."""
        with self.lock:
            self.expired.set()
            if self.connected is None:
                return
            try:
                with socket.fromfd(*self.connected, socket.SOCK_STREAM) as duplicate:
                    duplicate.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already shut

    def finish(self, connection: http.client.HTTPConnection | None) -> None:
        """Stop the timer and close the connection, never while the timer is cutting it."""
        self.timer.cancel()
        with self.lock:
            self.connected = None
            if connection is not None:
                connection.close()


class _PinnedConnection(http.client.HTTPConnection):
    """Connect through the delivery, to the one address its policy checked."""

    delivery: _Delivery

    def connect(self) -> None:
        self.sock = self.delivery.connect(self.host, self.port)


class _PinnedHTTPSConnection(http.client.HTTPSConnection, _PinnedConnection):
    """TLS over the pinned connection, verified against the URL's host name."""


def post_callback(
    url: str, body: bytes, headers: dict[str, str], policy: EgressPolicy, deadline_s: float, max_body_bytes: int,
) -> CallbackAnswer:
    """POST `body` to `url` and return the answer's status; raise CallbackUnreachable or EgressRefused."""
    delivery = _Delivery(policy, deadline_s)
    delivery.timer.start()
    connection = None
    try:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        kind, extra = (_PinnedHTTPSConnection, {"context": ssl.create_default_context()}) if secure else (_PinnedConnection, {})
        # The port always given: http.client would read an IPv6 address's last group as one.
        connection = kind(parts.hostname, parts.port or (443 if secure else 80), timeout=deadline_s, **extra)
        connection.delivery = delivery
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        response = connection.getresponse()
        response.read(max_body_bytes)  # at most this much of the body; the rest is never read
    except (OSError, http.client.HTTPException, ValueError) as error:  # ValueError: a URL http.client cannot send
        late = " within the deadline" if delivery.expired.is_set() else ""
        raise CallbackUnreachable(f"client callback not answered{late}: {type(error).__name__}") from error
    finally:
        delivery.finish(connection)
    if delivery.expired.is_set():  # cut short at the deadline, whatever the part that came seemed to say
        raise CallbackUnreachable("client callback not answered within the deadline")
    return CallbackAnswer(response.status, response.getheader("Retry-After"))
