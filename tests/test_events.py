"""Walk the job events table: each event moves a job only from the states it names, and only when its guard holds."""

import uuid
from datetime import timedelta

import pymongo.errors
import pytest

from service import states
from service.states import EVENTS, JobStatus
from service.store import utcnow

APPLY = {
    states.ENQUEUE_FAILED: lambda store, request_id: store.leave_pending(request_id, "enqueue failed"),
    states.ENQUEUE: lambda store, request_id: store.mark_queued(request_id, "enqueued"),
    states.CLAIM: lambda store, request_id: store.claim(request_id, "m1") is not None,
    states.AWAIT_WEBHOOK: lambda store, request_id: store.await_webhook(
        request_id, utcnow() + timedelta(minutes=5), detail="accepted", attempt=1,
    ),
    states.COMPLETE: lambda store, request_id: store.complete(request_id, {"account": "xyz"}, [], detail="done"),
    states.FAIL: lambda store, request_id: store.fail(request_id, "m1", "vendor rejected"),
    states.TIME_OUT: lambda store, request_id: store.time_out(request_id, "no webhook"),
    states.REREQUEST: lambda store, request_id: store.rerequest(request_id, "asking again"),
    states.RETRY: lambda store, request_id: store.retry(request_id, "retried by an operator"),
    states.CANCEL: lambda store, request_id: store.cancel_waiting(request_id, "cancelled by its client"),
    states.CANCEL_STARTED: lambda store, request_id: store.cancel_started(request_id, "cancelled by its client"),
}
TRANSITIONS = [event for event in EVENTS if event is not states.SUBMIT]


def job_in(store, status, **fields):
    """Store a job in `status`, its guards all met: its payload kept, its webhook overdue, claimed by m1 if processing."""
    request_id = str(uuid.uuid4())
    store.create(request_id, "sync", {"name": "n"})
    claimed = {"message_id": "m1"} if status is JobStatus.PROCESSING else {}
    deadline = {"webhook_deadline": utcnow() - timedelta(seconds=1)}
    store.collection.update_one({"_id": request_id}, {"$set": {"status": status.value, **deadline, **claimed, **fields}})
    return request_id


def test_every_event_but_submit_has_a_store_method():
    assert set(APPLY) == set(TRANSITIONS)


@pytest.mark.parametrize("event", TRANSITIONS, ids=lambda event: event.name)
@pytest.mark.parametrize("status", list(JobStatus), ids=lambda status: status.value)
def test_an_event_moves_a_job_only_from_the_states_it_leaves(keeping_store, event, status):
    request_id = job_in(keeping_store, status)
    before = keeping_store.collection.find_one({"_id": request_id})
    moved = APPLY[event](keeping_store, request_id)
    after = keeping_store.collection.find_one({"_id": request_id})
    if status in event.leaves:
        assert moved and after["status"] == event.enters.value
        assert after["history"][-1]["state"] == event.enters.value
    else:
        assert not moved and after == before


@pytest.mark.parametrize("status", list(JobStatus), ids=lambda status: status.value)
def test_submit_is_refused_for_a_request_id_that_exists(store, status):
    request_id = job_in(store, status)
    before = store.collection.find_one({"_id": request_id})
    with pytest.raises(pymongo.errors.WriteError, match="duplicate key"):
        store.create(request_id, "sync", {"name": "n"})
    assert store.collection.find_one({"_id": request_id}) == before


@pytest.mark.parametrize("event", [states.CLAIM, states.FAIL], ids=lambda event: event.name)
def test_a_processing_job_moves_only_for_the_message_that_claimed_it(store, event):
    request_id = job_in(store, JobStatus.PROCESSING, message_id="another message")
    assert not APPLY[event](store, request_id)
    assert store.get(request_id)["status"] == "processing"


@pytest.mark.parametrize("event", [states.TIME_OUT, states.REREQUEST], ids=lambda event: event.name)
def test_a_job_whose_webhook_is_not_overdue_stays_awaiting(store, event):
    request_id = job_in(store, JobStatus.AWAITING_WEBHOOK, webhook_deadline=utcnow() + timedelta(minutes=5))
    assert not APPLY[event](store, request_id)
    assert store.get(request_id)["status"] == "awaiting_webhook"


def test_a_job_whose_payload_was_erased_cannot_be_retried(store):
    request_id = job_in(store, JobStatus.FAILED)
    store.collection.update_one({"_id": request_id}, {"$unset": {"payload": ""}})
    assert not store.retry(request_id, "retried by an operator")
    assert store.get(request_id)["status"] == "failed"


@pytest.mark.parametrize("event", [states.REREQUEST, states.RETRY], ids=lambda event: event.name)
def test_a_job_queued_again_forgets_the_message_that_claimed_it_so_a_new_one_may_claim_it(keeping_store, event):
    request_id = job_in(keeping_store, next(iter(event.leaves)), message_id="the first message")
    assert APPLY[event](keeping_store, request_id)
    assert keeping_store.claim(request_id, "a new message") is not None
