"""The JSON log lines: a job's fields reach every record logged while it is handled, and only then."""

import io
import json
import logging

import pytest

from service.logs import CurrentJobFields, about_job, json_formatter


@pytest.fixture
def lines():
    """A logger writing JSON lines through the service's formatter and filter; yields a reader of the parsed lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(CurrentJobFields())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_records_name_the_job_being_handled_and_nothing_once_it_is_done(lines):
    logger, read = lines
    with about_job("job-1", "sync"):
        logger.info("inside")
        with about_job("job-2", None):
            logger.info("nested")
        logger.info("after the nested one")
    logger.info("outside")
    inside, nested, after, outside = read()
    assert (inside["request_id"], inside["vendor"]) == ("job-1", "sync")
    assert nested["request_id"] == "job-2" and "vendor" not in nested
    assert (after["request_id"], after["vendor"]) == ("job-1", "sync")
    assert "request_id" not in outside and "vendor" not in outside


def test_a_record_about_the_same_job_gains_only_what_it_lacks_and_one_about_another_job_nothing(lines):
    logger, read = lines
    with about_job("job-1", "sync"):
        logger.info("the same job", extra={"request_id": "job-1", "state": "processing"})
        logger.info("its own vendor", extra={"request_id": "job-1", "vendor": "async"})
        logger.info("another job", extra={"request_id": "job-9"})
    same, own_vendor, other = read()
    assert (same["request_id"], same["vendor"], same["state"]) == ("job-1", "sync", "processing")
    assert own_vendor["vendor"] == "async"
    assert other["request_id"] == "job-9" and "vendor" not in other
