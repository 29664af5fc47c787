"""The OpenAPI document stays true: it lists every route, and fuzzed requests match it."""

import uuid
from datetime import datetime, timezone

import falcon.inspect
import falcon.testing
import hypothesis
import pytest
import schemathesis

from service.app import create_app
from service.dashboard.auth import PREFIX as DASHBOARD_PREFIX
from service.listing import encode_cursor
from service.openapi import build_spec
from tests.signing import new_secret

SPEC = build_spec(["async", "sync"], callbacks=True)
CALLBACK_SECRET = new_secret("fuzzing-callbacks")


@pytest.fixture(scope="module")
def app(redis_url, mongodb_uri, tmp_path_factory):
    from cryptography.fernet import Fernet

    from service.config import Config
    from tests.conftest import with_database

    return create_app(Config(
        encryption_key=Fernet.generate_key().decode(), callback_secret=CALLBACK_SECRET, redis_url=redis_url,
        admin_token="operator-token-for-the-openapi-tests",
        mongodb_uri=with_database(mongodb_uri, "openapi_fuzz"), auth="open",
    ))


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def served_operations(app):
    """Return the client API's operations: the operator dashboard's HTML pages are no part of it."""
    return {
        (route.path, method.method.lower())
        for route in falcon.inspect.inspect_routes(app)
        for method in route.methods
        if method.internal is False and not route.path.startswith(DASHBOARD_PREFIX)
    }


def test_the_document_lists_exactly_the_routes_the_app_serves(app):
    documented = {(path, method) for path, operations in SPEC["paths"].items() for method in operations}
    assert documented == served_operations(app)


def test_the_served_document_is_the_spec(app):
    assert falcon.testing.TestClient(app).simulate_get("/openapi.json").json == SPEC


# Schema-violating requests can be made only where there is a body or a constrained parameter.
FUZZ_CASES = [
    pytest.param(path, method, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, operations in SPEC["paths"].items()
    for method, operation in operations.items()
    for mode in schemathesis.GenerationMode
    if mode is schemathesis.GenerationMode.POSITIVE or "requestBody" in operation
]


@pytest.mark.parametrize("path, method, mode", FUZZ_CASES)
def test_fuzzed_requests_get_documented_answers_and_never_a_5xx(api_schema, path, method, mode):
    operation = api_schema[path][method]

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck), database=None)
    def fuzz(case):
        if case.headers and "Idempotency-Key" in case.headers:
            # A reused key with another body is a documented 422; keep the positive cases positive.
            case.headers["Idempotency-Key"] = str(uuid.uuid4())
        if case.query and "starting_after" in case.query and mode is schemathesis.GenerationMode.POSITIVE:
            # A cursor is opaque: only one the API made is valid, and a made-up one is a documented 400.
            case.query["starting_after"] = encode_cursor((datetime.now(timezone.utc), str(uuid.uuid4())))
        case.call_and_validate()

    fuzz()
