import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pymongo
import pytest
from pymongo import monitoring

from service.errors import JobNotFound
from service.states import EVENTS, JobStatus
from service.store import HISTORY_LIMIT, Claim, Completion, JobStore, jobs_collection, utcnow

PAYLOAD = {"name": "John", "email": "john@example.com", "password": "hunter2"}


def new_job(store, vendor="sync"):
    request_id = str(uuid.uuid4())
    store.create(request_id, vendor, PAYLOAD)
    return request_id


def test_payload_is_stored_encrypted_and_hidden_from_get(store):
    request_id = new_job(store)
    raw = store.collection.find_one({"_id": request_id})
    assert "hunter2" not in repr(raw) and "john@example.com" not in repr(raw)
    assert "payload" not in store.get(request_id)
    assert store.get(request_id)["status"] == "queued"


def test_claim_decrypts_the_payload_and_counts_no_attempt_until_its_outcome_is_recorded(store):
    request_id = new_job(store)
    job = store.claim(request_id, "m1")
    assert job["payload"] == PAYLOAD
    assert job["status"] == "processing" and job["attempts"] == 0
    assert store.complete(request_id, {"account": "xyz"}, [], detail="done", attempt=1)
    assert store.get(request_id)["attempts"] == 1


def test_the_same_message_may_reclaim_but_another_may_not(store):
    request_id = new_job(store)
    assert store.claim(request_id, "m1") is not None
    assert store.claim(request_id, "m2") is None
    again = store.claim(request_id, "m1")
    assert again is not None and again["status"] == "processing" and again["message_id"] == "m1"


def test_terminal_transition_erases_the_payload_and_sets_retention(store):
    request_id = new_job(store)
    store.claim(request_id, "m1")
    assert store.complete(request_id, {"account": "xyz"}, ["email"], detail="done")
    raw = store.collection.find_one({"_id": request_id})
    assert "payload" not in raw
    assert raw["result"] == {"account": "xyz"} and raw["removed_keys"] == ["email"]
    assert raw["expires_at"] > raw["updated_at"]
    assert [entry["state"] for entry in raw["history"]] == ["queued", "processing", "complete"]


def test_concurrent_completions_apply_exactly_one_result(store):
    request_id = new_job(store, vendor="async")
    store.claim(request_id, "m1")
    store.await_webhook(request_id, utcnow() + timedelta(minutes=5), detail="accepted", attempt=1)
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(lambda n: store.complete(request_id, {"n": n}, [], detail=f"webhook {n}"), range(32)))
    assert outcomes.count(True) == 1
    job = store.get(request_id)
    assert job["result"] == {"n": outcomes.index(True)}
    assert [entry["state"] for entry in job["history"]].count("complete") == 1


def test_concurrent_claims_by_different_messages_let_one_win(store):
    request_id = new_job(store)
    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(lambda n: store.claim(request_id, f"m{n}"), range(16)))
    assert sum(claim is not None for claim in claims) == 1
    assert [entry["state"] for entry in store.get(request_id)["history"]].count("processing") == 1


def test_concurrent_claims_of_many_jobs_each_get_their_own_job_or_none(store):
    request_ids = [new_job(store) for _ in range(40)]
    held = set(request_ids[::4])
    for request_id in held:
        assert store.claim(request_id, "another message") is not None
    with ThreadPoolExecutor(16) as pool:  # claims in flight at once share a bulk write and a read
        claims = list(pool.map(lambda request_id: store.claim(request_id, f"m-{request_id}"), request_ids))
    assert [claim is None for claim in claims] == [request_id in held for request_id in request_ids]
    for request_id, claim in zip(request_ids, claims):
        if claim is not None:
            assert claim["_id"] == request_id and claim["payload"] == PAYLOAD and claim["message_id"] == f"m-{request_id}"


def test_history_is_bounded(store):
    request_id = new_job(store)
    for n in range(HISTORY_LIMIT + 10):
        store.note(request_id, f"event {n}")
    history = store.get(request_id)["history"]
    assert len(history) == HISTORY_LIMIT
    assert history[-1]["event"] == f"event {HISTORY_LIMIT + 9}"


def test_unknown_job_is_not_found(store):
    with pytest.raises(JobNotFound):
        store.get("no-such-job")


def test_stale_ids_finds_only_old_jobs_in_that_state(store):
    old, fresh, other = new_job(store), new_job(store), new_job(store)
    for request_id in (old, fresh, other):
        store.leave_pending(request_id, "enqueue failed")
    five_minutes_ago = store.get(old)["updated_at"] - timedelta(minutes=5)
    store.collection.update_many({"_id": {"$in": [old, other]}}, {"$set": {"updated_at": five_minutes_ago, "due_at": five_minutes_ago}})
    store.claim(other, "m1")
    store.collection.update_one({"_id": other}, {"$set": {"updated_at": five_minutes_ago, "due_at": five_minutes_ago}})
    assert list(store.stale_ids(JobStatus.PENDING, timedelta(minutes=1))) == [old]


def test_a_result_that_cannot_be_stored_is_refused_and_leaves_the_job_as_it_was(store):
    from service.errors import UnstorableResult

    request_id = new_job(store)
    store.claim(request_id, "m1")
    with pytest.raises(UnstorableResult, match="cannot be stored"):
        store.complete(request_id, {"n": 2**63 + 5}, [], detail="too wide")
    assert store.get(request_id)["status"] == "processing"


def test_concurrent_completions_each_learn_whether_they_moved_their_job_and_one_unstorable_result_spoils_no_other(store):
    from service.errors import UnstorableResult

    request_ids = [new_job(store) for _ in range(30)]
    unstorable, done_before = request_ids[0], set(request_ids[1::5])
    for request_id in done_before:
        assert store.complete(request_id, {"first": True}, [], detail="first")

    def complete(request_id):
        result = {"n": 2**63 + 5} if request_id == unstorable else {"account": request_id}
        try:
            return store.complete(request_id, result, [], detail="done", attempt=1)
        except UnstorableResult:
            return "unstorable"

    with ThreadPoolExecutor(16) as pool:  # completions in flight at once share a bulk write and a read
        moved = list(pool.map(complete, request_ids))
    expected = ["unstorable" if r == unstorable else r not in done_before for r in request_ids]
    assert moved == expected
    for request_id in request_ids[1:]:
        job = store.get(request_id)
        assert job["status"] == "complete"
        assert job["result"] == ({"first": True} if request_id in done_before else {"account": request_id})
    assert store.get(unstorable)["status"] == "queued"


class CommandNames(monitoring.CommandListener):
    """Record the names of the commands a client sends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


@pytest.fixture
def watched(store, config):
    """A job store on a client of its own, and the names of the commands that client sends."""
    commands = CommandNames()
    client = pymongo.MongoClient(config.mongodb_uri, event_listeners=[commands])
    yield JobStore(jobs_collection(client), store.cipher), commands.names
    client.close()


def test_a_completion_reads_its_job_back_only_when_a_write_of_its_batch_did_not_move_one(store, watched):
    watched_store, sent = watched
    request_id = new_job(store)
    assert watched_store.complete(request_id, {"account": "xyz"}, [], detail="done", attempt=1)
    assert sent == ["update"]  # it moved: nothing to read back
    assert not watched_store.complete(request_id, {"account": "again"}, [], detail="again", attempt=1)
    assert sent == ["update", "update", "find"]  # it did not: which write moved what is read back
    assert store.get(request_id)["result"] == {"account": "xyz"}


def test_a_claim_and_a_completion_in_one_batch_share_an_update_and_a_find(store, watched):
    watched_store, sent = watched
    claimed, completed, taken = new_job(store), new_job(store), new_job(store)
    store.claim(taken, "m0")
    outcomes = watched_store._move_many([
        Claim(claimed, "m1"), Completion(completed, {"result": {"n": 1}}, "done", 1), Claim(taken, "m2"),
    ])
    assert sent == ["update", "find"]
    assert outcomes[0]["_id"] == claimed and outcomes[0]["message_id"] == "m1"
    assert outcomes[1:] == [True, None]  # the completion moved its job; a job another message holds is not claimed
    assert store.get(completed)["result"] == {"n": 1} and store.get(taken)["message_id"] == "m0"


def test_a_job_without_its_payload_is_claimed_without_one(store):
    request_id = new_job(store)
    store.collection.update_one({"_id": request_id}, {"$unset": {"payload": ""}})
    job = store.claim(request_id, "m1")
    assert job["status"] == "processing" and "payload" not in job


def test_a_stale_message_cannot_fail_a_job_another_message_holds(store):
    request_id = new_job(store)
    store.claim(request_id, "live")
    assert not store.fail(request_id, "stale", "dead-lettered")
    assert store.get(request_id)["status"] == "processing"
    assert store.fail(request_id, "live", "the job could not be processed", detail="internal detail")
    job = store.get(request_id)
    assert job["error"] == "the job could not be processed" and job["history"][-1]["detail"] == "internal detail"


def test_concurrent_submissions_and_reads_each_get_their_own_job(store):
    with ThreadPoolExecutor(max_workers=32) as pool:
        request_ids = list(pool.map(lambda _: new_job(store), range(200)))
        views = list(pool.map(store.get, request_ids))
    assert [view["_id"] for view in views] == request_ids
    assert store.collection.count_documents({"_id": {"$in": request_ids}}) == 200


def test_a_refused_insert_in_a_batch_fails_only_its_own_job(store):
    taken = new_job(store)
    fresh = str(uuid.uuid4())
    batch = [{"_id": taken, "status": "queued"}, {"_id": fresh, "status": "queued"}]
    refused, stored = store.insert_many(batch)
    assert "duplicate key" in str(refused).lower() and stored is None
    assert store.get(fresh)["status"] == "queued"


def test_a_read_batch_tells_missing_jobs_apart(store):
    known = new_job(store)
    assert [job and job["_id"] for job in store.find_many([known, "nope", known])] == [known, None, known]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: event.name)
def test_a_transitions_filter_names_the_id_first(store, event):
    """The embedded MongoDB-wire server tries each field's indexes in turn, and reads the job at once by `_id`."""
    query, _ = store._transition(event, "a-job", guarded_by="a-message")
    assert next(iter(query)) == "_id"
