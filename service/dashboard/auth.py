"""Let only operators in: the ADMIN_TOKEN as a bearer header, or a signed session cookie from the login form.

The cookie never holds the token: it holds an issue time and a random id, signed with a key
derived from the token (so changing ADMIN_TOKEN ends every session). The id is also kept in
Redis for the session's lifetime, and logging out deletes it, so a copied cookie dies with its
session. A POST made with the cookie must carry the session's CSRF token, an HMAC of the
cookie; a bearer header cannot be sent by another site's page, so bearer POSTs need none.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import falcon
import redis

PREFIX = "/dashboard"
API_PREFIX = f"{PREFIX}/api/"
LOGIN_PATH = f"{PREFIX}/login"
SESSION_COOKIE = "vendorfetch_dashboard"
SESSION_TTL_S = 12 * 3600


def session_key(session_id: str) -> str:
    """Return the Redis key that keeps a session alive."""
    return f"dashboard:session:{session_id}"


class OperatorAuth:
    """Check the operator's credentials, keep sessions, and sign sessions and CSRF tokens."""

    def __init__(self, admin_token: str, sessions: redis.Redis) -> None:
        self.token_digest = hashlib.sha256(admin_token.encode()).digest()
        self.key = hmac.new(admin_token.encode(), b"vendorfetch dashboard sessions", hashlib.sha256).digest()
        self.sessions = sessions

    def token_matches(self, given: str) -> bool:
        """Compare a presented token with ADMIN_TOKEN in constant time."""
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self.token_digest)

    def sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """Start a session and return its cookie value: issue time, random id, signature."""
        session_id = secrets.token_urlsafe(16)
        self.sessions.set(session_key(session_id), 1, ex=SESSION_TTL_S)
        body = f"{int(time.time())}.{session_id}"
        return f"{body}.{self.sign(body)}"

    def signed_session_id(self, session: str) -> str | None:
        """Return the id of a cookie value we signed within the session lifetime, or None."""
        body, _, signature = session.rpartition(".")
        issued, _, session_id = body.partition(".")
        signed = same(signature, self.sign(body)) and issued.isdigit() and time.time() - int(issued) < SESSION_TTL_S
        return session_id if signed else None

    def session_valid(self, session: str) -> bool:
        """Tell whether a cookie value is a session we signed that has neither expired nor ended."""
        session_id = self.signed_session_id(session)
        return session_id is not None and self.sessions.exists(session_key(session_id)) == 1

    def end_session(self, session: str | None) -> None:
        """End a session at once: its cookie, wherever copies of it are, opens nothing any more."""
        session_id = self.signed_session_id(session) if session else None
        if session_id is not None:
            self.sessions.delete(session_key(session_id))

    def csrf_token(self, session: str | None) -> str:
        """Return the CSRF token of a session (none without one: bearer requests need none)."""
        return self.sign(f"csrf.{session}") if session else ""

    def operator(self, req: falcon.Request) -> str | None:
        """Return how the request proves it comes from an operator ('bearer' or 'session'), or None."""
        scheme, _, credentials = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return "bearer"
        session = session_of(req)
        return "session" if session and self.session_valid(session) else None

    def check_csrf(self, req: falcon.Request) -> None:
        """Refuse a cookie-authenticated POST whose CSRF token (form field or header) is wrong."""
        given = req.get_header("X-CSRF-Token") or form_value(req, "csrf_token")
        if not same(given, self.csrf_token(session_of(req))):
            raise falcon.HTTPForbidden(title="CSRF check failed", description="reload the page and try again")


def same(given: str, expected: str) -> bool:
    """Compare strings in constant time; any text may come in, so compare bytes."""
    return hmac.compare_digest(given.encode(), expected.encode())


def session_of(req: falcon.Request) -> str | None:
    values = req.get_cookie_values(SESSION_COOKIE)
    return values[0] if values else None


def form_value(req: falcon.Request, name: str) -> str:
    """Return one field of a url-encoded form (or JSON object) body, or ''."""
    body = req.get_media(default_when_empty={})
    value = body.get(name, "") if isinstance(body, dict) else ""
    return value if isinstance(value, str) else ""


def local_path(target: str | None) -> str:
    """Return `target` if it is a dashboard path, else the overview: no open redirects."""
    if target and target.startswith(PREFIX) and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX


def require_operator(req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]) -> None:
    """Let operators through (checking CSRF on session POSTs); send browsers to log in, refuse the rest."""
    how = resource.auth.operator(req)
    if how is None:
        if req.method == "GET" and not req.path.startswith(API_PREFIX):
            raise falcon.HTTPSeeOther(f"{LOGIN_PATH}?{urlencode({'next': req.relative_uri})}")
        raise falcon.HTTPUnauthorized(
            title="Operator token required",
            description="send Authorization: Bearer <ADMIN_TOKEN>, or log in at /dashboard/login", challenges=["Bearer"],
        )
    if req.method == "POST" and how == "session":
        resource.auth.check_csrf(req)
    req.context.via = how
    req.context.operator = f"{how} from {req.remote_addr}"
