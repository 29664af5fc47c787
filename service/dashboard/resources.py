"""The dashboard's resources: each page also answers as JSON under /dashboard/api/ for polling and scripts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import falcon

from service.clients.store import ClientError, ClientStore
from service.dashboard.actions import OperatorActions
from service.dashboard.auth import (
    LOGIN_PATH, PREFIX, SESSION_COOKIE, SESSION_TTL_S, OperatorAuth, form_value, local_path, require_operator, session_of,
)
from service.dashboard.pages import notice, protect, render
from service.dashboard.queries import DashboardQueries

log = logging.getLogger(__name__)


def operator_only(resource_class: type) -> type:
    """Require an operator on every responder of the class, and add the security headers."""
    return falcon.after(protect)(falcon.before(require_operator)(resource_class))


def page(req: falcon.Request, auth: OperatorAuth, section: str) -> dict[str, Any]:
    """Return what every page's frame needs: the CSRF token, the section, any notice."""
    return {"csrf": auth.csrf_token(session_of(req)), "section": section, "notice": notice(req)}


def with_notice(path: str, code: str, count: int) -> str:
    """Return a dashboard path with the notice of an action in its query, replacing any earlier one."""
    parts = urlsplit(local_path(path))
    query = [(key, value) for key, value in parse_qsl(parts.query) if key not in ("notice", "count")]
    return parts._replace(query=urlencode([*query, ("notice", code), ("count", count)])).geturl()


def done(req: falcon.Request, resp: falcon.Response, code: str, count: int) -> None:
    """Answer an action: JSON to a script (bearer), a redirect back to its page to a browser."""
    if req.context.via == "bearer":
        resp.media = {"notice": code, "count": count}
        return
    raise falcon.HTTPSeeOther(with_notice(form_value(req, "next"), code, count))


class Resource:
    """A dashboard resource: the operator check and the reads it answers from."""

    def __init__(self, auth: OperatorAuth, queries: DashboardQueries, actions: OperatorActions) -> None:
        self.auth = auth
        self.queries = queries
        self.actions = actions


@operator_only
class Page:
    """GET a page drawn from one query, or (suffix `data`) that query's JSON: the overview, the scheduler."""

    def __init__(self, auth: OperatorAuth, section: str, read: Callable[[], dict[str, Any]]) -> None:
        self.auth = auth
        self.section = section
        self.read = read

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        render(resp, f"{self.section}.html", **page(req, self.auth, self.section), data=self.read())

    def on_get_data(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.read()


@operator_only
class Throughput(Resource):
    """GET /dashboard/api/throughput: jobs submitted, completed and failed per minute, last hour."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.queries.throughput()


@operator_only
class Failures(Resource):
    """GET /dashboard/failures: failed and timed-out jobs, filtered and paged, and the dead letters."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = self.read(req)
        render(resp, "failures.html", **page(req, self.auth, "failures"), data=data,
               vendors=sorted(self.queries.registry.vendors), query=urlsplit(req.relative_uri).query)

    def on_get_data(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.read(req)

    def read(self, req: falcon.Request) -> dict[str, Any]:
        page_number = req.get_param_as_int("page", min_value=1, default=1)
        return self.queries.failures(req.get_param("vendor"), req.get_param("reason"), page_number)


@operator_only
class RetryFailures(Resource):
    """POST /dashboard/failures/retry: retry every retryable job that matches the filter."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        vendor, reason = form_value(req, "vendor") or None, form_value(req, "reason") or None
        done(req, resp, "retried", self.actions.retry_matching(vendor, reason, req.context.operator))


@operator_only
class PurgeDeadLetters(Resource):
    """POST /dashboard/dead-letters/purge: delete the job queue's dead letters."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        done(req, resp, "purged", self.actions.purge_dead_letters(req.context.operator))


@operator_only
class JobLookup(Resource):
    """GET /dashboard/jobs?request_id=...: go to that job's page."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        request_id = (req.get_param("request_id") or "").strip()
        raise falcon.HTTPSeeOther(f"{PREFIX}/jobs/{quote(request_id, safe='')}" if request_id else PREFIX)


@operator_only
class JobPage(Resource):
    """GET /dashboard/jobs/{request_id}: a job's timeline, attempts, error and cleaned result."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        job = self.queries.job(request_id)
        status = falcon.HTTP_200 if job else falcon.HTTP_404
        render(resp, "job.html", status, **page(req, self.auth, "job"), job=job, request_id=request_id)

    def on_get_data(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        job = self.queries.job(request_id)
        if job is None:
            raise falcon.HTTPNotFound(title="Job not found", description=f"no job has request_id {request_id!r}")
        resp.media = job


@operator_only
class RetryJob(Resource):
    """POST /dashboard/jobs/{request_id}/retry: queue one failed or timed-out job again."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        retried = self.actions.retry(request_id, req.context.operator)
        done(req, resp, "retried" if retried else "not_retried", int(retried))


@operator_only
class ResendCallback(Resource):
    """POST /dashboard/jobs/{request_id}/callback: re-send a client callback that was given up."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        resent = self.actions.resend_callback(request_id, req.context.operator)
        done(req, resp, "resent" if resent else "not_resent", int(resent))


@operator_only
class RevokeKey:
    """POST /dashboard/clients/revoke: revoke the API key shown with a prefix (form field `prefix`)."""

    def __init__(self, auth: OperatorAuth, clients: ClientStore) -> None:
        self.auth = auth
        self.clients = clients

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        prefix = form_value(req, "prefix")
        try:
            client = self.clients.revoke(prefix)
        except ClientError as error:
            raise falcon.HTTPNotFound(title="Key not found", description=str(error)) from None
        log.info("operator revoked an API key", extra={
            "client": client, "key_prefix": prefix, "operator_action": "revoke_key", "operator": req.context.operator,
        })
        done(req, resp, "revoked", 1)


@falcon.after(protect)
class Login:
    """GET/POST /dashboard/login: trade the operator token for a session cookie."""

    def __init__(self, auth: OperatorAuth) -> None:
        self.auth = auth

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        render(resp, "login.html", next=local_path(req.get_param("next")), error=None)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        target = local_path(form_value(req, "next"))
        if not self.auth.token_matches(form_value(req, "token")):
            render(resp, "login.html", falcon.HTTP_401, next=target, error="That is not the operator token.")
            return
        resp.set_cookie(
            SESSION_COOKIE, self.auth.new_session(), max_age=SESSION_TTL_S, path=PREFIX,
            secure=req.forwarded_scheme == "https", http_only=True, same_site="Strict",
        )
        raise falcon.HTTPSeeOther(target)


@operator_only
class Logout(Resource):
    """POST /dashboard/logout: end the session."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.auth.end_session(session_of(req))
        resp.unset_cookie(SESSION_COOKIE, path=PREFIX)
        raise falcon.HTTPSeeOther(LOGIN_PATH)


class StaticFiles:
    """GET /dashboard/static/{name}: the dashboard's CSS and JavaScript, public since they hold no data."""

    TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

    def __init__(self, folder: Path) -> None:
        self.files = {path.name: (self.TYPES[path.suffix], path.read_bytes()) for path in folder.iterdir() if path.suffix in self.TYPES}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in self.files:
            raise falcon.HTTPNotFound(description=f"the dashboard has no static file {name!r}")
        resp.content_type, resp.data = self.files[name]
        resp.set_header("X-Content-Type-Options", "nosniff")
