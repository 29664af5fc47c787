"""Render the dashboard's HTML from Jinja templates and keep its answers out of caches and frames."""

from __future__ import annotations

from typing import Any

import falcon
from jinja2 import Environment, PackageLoader

TEMPLATES = Environment(loader=PackageLoader("service.dashboard", "templates"), autoescape=True)

#: Scripts and styles from the app only (no inline code, no CDN); no framing; nothing cached.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: What the pages say after an action redirected back to them (?notice=CODE&count=N).
NOTICES = {
    "retried": "Retried {count} job(s); they are queued again.",
    "not_retried": "Not retried: the job is no longer failed, or its payload was erased.",
    "purged": "Purged {count} dead letter(s).",
    "resent": "The client callback is queued again, on a fresh schedule.",
    "not_resent": "Not re-sent: the callback is no longer given up.",
    "revoked": "The API key is revoked; the API refuses it within a few seconds.",
}


def protect(req: falcon.Request, resp: falcon.Response, resource: Any, *args: Any) -> None:
    """Add the dashboard's security headers to an answer."""
    resp.set_headers(SECURITY_HEADERS)


def render(resp: falcon.Response, template: str, status: str = falcon.HTTP_200, **context: Any) -> None:
    """Answer with a rendered template."""
    resp.status = status
    resp.content_type = falcon.MEDIA_HTML
    resp.text = TEMPLATES.get_template(template).render(**context)


def notice(req: falcon.Request) -> str | None:
    """Return the message of the action that redirected here, if any."""
    text = NOTICES.get(req.get_param("notice") or "")
    return text.format(count=req.get_param_as_int("count", min_value=0, default=0)) if text else None
