"""The release step, `python -m service.migrate`, run as a deployment runs it."""

import os
import subprocess
import sys
import uuid
from datetime import timedelta

from devtools.stores import free_port
from queueing.lease import SWEEPS_KEY
from service.store import connect, jobs_collection, utcnow
from tests.conftest import with_database


def migrate(config, mongodb_uri):
    env = {
        **os.environ, "ENCRYPTION_KEY": config.encryption_key, "MONGODB_URI": mongodb_uri, "REDIS_URL": config.redis_url,
        "STORE_TIMEOUT_MS": "500",
    }
    return subprocess.run([sys.executable, "-m", "service.migrate"], env=env, capture_output=True, text=True, timeout=60)


def test_the_release_step_creates_the_indexes_and_mends_what_an_earlier_version_left(config, redis_client):
    jobs = jobs_collection(connect(config.mongodb_uri))
    request_id = str(uuid.uuid4())
    jobs.insert_one({"_id": request_id, "status": "queued", "message_id": "a message of an earlier request"})
    redis_client.hset(SWEEPS_KEY, mapping={"indexes": "{}", "orphans": "{}", "leader": "a clock"})
    done = migrate(config, config.mongodb_uri)
    assert done.returncode == 0, done.stderr
    assert "status_due_at" in jobs.index_information()
    assert "message_id" not in jobs.find_one({"_id": request_id})
    assert set(redis_client.hkeys(SWEEPS_KEY)) == {b"orphans", b"leader"}  # the retired sweep's record is gone
    assert migrate(config, config.mongodb_uri).returncode == 0  # idempotent


def test_the_release_step_fails_when_mongodb_is_unreachable(config):
    unreachable = with_database(f"mongodb://127.0.0.1:{free_port()}/x", "vendorfetch")
    done = migrate(config, unreachable)
    assert done.returncode != 0 and "ServerSelectionTimeoutError" in done.stderr


def test_callbacks_an_earlier_version_queued_and_left_untracked_are_pending_again(store):
    now = utcnow()
    recent, delivered, long_ago = (str(uuid.uuid4()) for _ in range(3))
    store.collection.insert_many([
        {"_id": recent, "status": "complete", "callback_url": "http://127.0.0.1:9/hook", "callback_queued_at": now, "finished_at": now},
        {"_id": delivered, "status": "complete", "callback_url": "http://127.0.0.1:9/hook", "callback_queued_at": now,
         "callback_delivered_at": now, "finished_at": now},
        {"_id": long_ago, "status": "complete", "callback_url": "http://127.0.0.1:9/hook",
         "callback_queued_at": now - timedelta(days=2), "finished_at": now - timedelta(days=2)},
    ])
    store.migrate()
    pending = {job["_id"] for job in store.collection.find({"callback_pending": True})}
    assert pending == {recent}
