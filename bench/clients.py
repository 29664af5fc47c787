"""What knowing the client costs a request, and what a page of a client's jobs costs, in process.

    .venv/bin/python -m bench.clients [--requests 1000] [--jobs 250]

Builds the API in this process (no HTTP server) on fresh embedded data stores and times
`GET /jobs/{id}` one request at a time: under AUTH=open as the client `public` (no key, no
request limit), then under AUTH=keys with an API key (a remembered key and one request-window
script in Redis). Then it stores `--jobs` jobs of that client and times `GET /jobs?limit=100`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import falcon.testing
from cryptography.fernet import Fernet

from devtools import stores
from service.app import create_app
from service.clients.store import ClientStore
from service.config import Config
from service.store import open_store


def timed(call, count: int) -> str:
    """Call `count` times after a warm-up; return the median and p99 in µs."""
    for _ in range(min(count, 50)):
        call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e6)
    return f"median {statistics.median(times):,.0f} µs, p99 {statistics.quantiles(times, n=100)[98]:,.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=250)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    redis_server, mongo_server = stores.valkey(folder / "valkey").start(), stores.secantus(folder / "mongodb").start()
    try:
        config = Config(encryption_key=Fernet.generate_key().decode(), redis_url=redis_server.url,
                        mongodb_uri=mongo_server.url, auth="open")
        store = open_store(config)
        clients = ClientStore(store.collection.database, store.cipher)
        clients.migrate()
        _, key = clients.add("bench", rate_per_s=1_000_000)
        bearer = {"Authorization": f"Bearer {key}"}
        open_api = falcon.testing.TestClient(create_app(config))
        keyed_api = falcon.testing.TestClient(create_app(dataclasses.replace(config, auth="keys")))
        public_job = open_api.simulate_post("/jobs", json={"name": "Ann"}).json["request_id"]
        own_job = keyed_api.simulate_post("/jobs", json={"name": "Ann"}, headers=bearer).json["request_id"]
        print("AUTH=open, GET /jobs/{id} as public:", timed(lambda: open_api.simulate_get(f"/jobs/{public_job}"), args.requests))
        print("AUTH=keys, GET /jobs/{id} with a key:", timed(lambda: keyed_api.simulate_get(f"/jobs/{own_job}", headers=bearer), args.requests))
        for _ in range(args.jobs - 1):
            keyed_api.simulate_post("/jobs", json={"name": "Ann"}, headers=bearer)
        print(f"AUTH=keys, GET /jobs?limit=100 of {args.jobs} jobs:",
              timed(lambda: keyed_api.simulate_get("/jobs", params={"limit": "100"}, headers=bearer), 100))
    finally:
        redis_server.stop()
        mongo_server.stop()


if __name__ == "__main__":
    main()
