"""Session-wide real data stores: embedded servers, or REDIS_URL / MONGODB_URI when set."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid

import dramatiq
import pymongo
import pytest
import redis

from devtools import stores
from queueing.keys import delay_key, iter_stream
from queueing.messages import QUEUE_NAME

# Metrics of this run's processes only, apart from any other run's (see service/metrics.py).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vendorfetch-metrics-")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """Return the URL of a real Redis-protocol server for the whole run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = stores.valkey(tmp_path_factory.mktemp("valkey")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory):
    """Return the URI of a real MongoDB-wire server for the whole run."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    server = stores.secantus(tmp_path_factory.mktemp("secantus")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory):
    """Start a local Valkey cluster, 3 primaries and 3 replicas, for the run's cluster tests."""
    from devtools.cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("valkey-cluster")).start()
    yield cluster
    cluster.stop()


def flushed(client):
    """Yield the client on emptied databases, empty them again afterwards and close it."""
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url):
    """Give a client on a flushed database, flushed again afterwards."""
    yield from flushed(redis.Redis.from_url(redis_url))


@pytest.fixture(scope="session")
def mongo_client(mongodb_uri):
    client = pymongo.MongoClient(mongodb_uri)
    yield client
    client.close()


@pytest.fixture
def mongo_db(mongo_client):
    """Give a database of its own to one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


def with_database(mongodb_uri: str, name: str) -> str:
    """Return the URI with its database path replaced by `name`, options kept."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(mongodb_uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def config(redis_url, mongodb_uri, mongo_client, redis_client):
    """Give settings on a flushed Redis and a database of this test's own, dropped afterwards."""
    from cryptography.fernet import Fernet

    from service.config import Config

    name = f"test_{uuid.uuid4().hex[:12]}"
    yield Config(
        encryption_key=Fernet.generate_key().decode(),
        redis_url=redis_url,
        mongodb_uri=with_database(mongodb_uri, name),
        public_url="http://127.0.0.1:4000",
        auth="open",  # the client API's tests act as the client `public`; tests/test_clients.py asks for keys
    )
    mongo_client.drop_database(name)


def nested(levels):
    """Return an object whose objects nest `levels` deep."""
    value = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"inner": value}
    return value


def open_test_store(config, **settings):
    """Open a JobStore on this test's database, with `settings` in place of the config's, and its indexes."""
    from service.store import open_store

    job_store = open_store(dataclasses.replace(config, **settings))
    job_store.migrate()
    return job_store


@pytest.fixture
def store(config):
    """Give a JobStore on this test's database, with its indexes."""
    job_store = open_test_store(config)
    yield job_store
    job_store.collection.database.client.close()


@pytest.fixture
def keeping_store(config):
    """Give a store that keeps failed jobs' payloads, as with KEEP_FAILED_PAYLOADS."""
    job_store = open_test_store(config, keep_failed_payloads=True)
    yield job_store
    job_store.collection.database.client.close()


@pytest.fixture
def clients(store):
    """Give the client store of this test's database, with the `public` client."""
    from service.clients.store import ClientStore

    client_store = ClientStore(store.collection.database, store.cipher)
    client_store.migrate()
    return client_store


def with_registry(config, folder, registry: str, **settings):
    """Return the config with `registry` (TOML) as its vendor registry, written into `folder`, and `settings`."""
    path = folder / "vendors.toml"
    path.write_text(registry)
    return dataclasses.replace(config, vendors_file=str(path), **settings)


def queued_messages(redis_client):
    """Return {request_id: (vendor option, due ms or None)} of every fetch message, in the stream or delayed."""
    found = {}
    for _, fields in iter_stream(redis_client, QUEUE_NAME):
        message = dramatiq.Message.decode(fields[b"message"])
        found[message.args[0]] = (message.options["vendor"], None)
    for member, due_ms in redis_client.zrange(delay_key(QUEUE_NAME), 0, -1, withscores=True):
        message = dramatiq.Message.decode(member.split(b"|", 1)[1])
        assert message.args[0] not in found, "a job was enqueued twice"
        found[message.args[0]] = (message.options["vendor"], due_ms)
    return found
