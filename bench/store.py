"""What a job costs the embedded MongoDB-wire server, by batch size: the floor under the burst drain.

    python -m bench.store                 # 1,600 jobs at each batch size
    python -m bench.store --jobs 400

A sync job reaches the store three times: the API inserts it, a worker claims it (an update and a
read) and completes it (an update). This runs exactly those commands through the service's own
JobStore, in batches of 1 to 16 jobs as group commit forms them, on a fresh embedded server with
the service's indexes, and prints the server's busy CPU per job for each step, in all, and the
jobs per second that allows. The server runs its Python under one lock, so one core is all it
can give, whatever the machine has.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import uuid
from pathlib import Path

from cryptography.fernet import Fernet

from bench import machine
from bench.load import cpu_s, stat_fields
from devtools import stores
from service.store import Claim, Completion, JobStore, connect, jobs_collection, payload_cipher

BATCH_SIZES = (1, 2, 4, 8, 16)
PAYLOAD = {"username": "ann", "password": "a password", "account": "12345678"}
RESULT = {"account": "12345678", "balance": 5000, "currency": "EUR", "holder": "Ann"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1600, help="jobs at each batch size")
    return parser.parse_args()


def busy_cpu_s(pid: int) -> float:
    """Return the CPU seconds a process has used so far, all its threads included."""
    return cpu_s(stat_fields(Path(f"/proc/{pid}/stat")))


def in_batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(store: JobStore, pid: int, jobs: int, size: int) -> dict[str, float]:
    """Insert, claim and complete `jobs` new jobs, `size` at a time; return the server's µs per job for each step."""
    request_ids = [str(uuid.uuid4()) for _ in range(jobs)]
    steps = {
        "insert": lambda batch: store.insert_many([{**store.new_job(request_id, PAYLOAD), "vendor": "sync"} for request_id in batch]),
        "claim": lambda batch: store._move_many([Claim(request_id, f"message-{request_id}") for request_id in batch]),
        "complete": lambda batch: store._move_many([
            Completion(request_id, {"result": RESULT, "removed_keys": [], "error": None}, "sync answered 200", 1) for request_id in batch
        ]),
    }
    used = {}
    for step, run in steps.items():
        before = busy_cpu_s(pid)
        for batch in in_batches(request_ids, size):
            outcomes = run(batch)
            if not all(outcome is None if step == "insert" else outcome for outcome in outcomes):
                raise RuntimeError(f"a {step} in a batch of {size} did not move its job: {outcomes}")
        used[step] = 1e6 * (busy_cpu_s(pid) - before) / jobs
    return used


def main() -> None:
    args = parse_args()
    print(machine.describe())
    folder = Path(tempfile.mkdtemp(prefix="vendorfetch-store-"))
    server = stores.secantus(folder / "mongodb").start()
    try:
        store = JobStore(jobs_collection(connect(server.url)), payload_cipher(Fernet.generate_key().decode()))
        store.migrate()
        measure(store, server.process.pid, 200, 4)  # warm up: connections, caches
        print(f"{args.jobs} jobs at each batch size; the server's busy CPU per job, µs")
        print(f"{'batch':>5} {'insert':>8} {'claim':>8} {'complete':>9} {'in all':>8} {'jobs/s a core allows':>21}")
        first = None
        for size in BATCH_SIZES:
            used = measure(store, server.process.pid, args.jobs, size)
            total = sum(used.values())
            first = first or total
            print(f"{size:>5} {used['insert']:>8,.0f} {used['claim']:>8,.0f} {used['complete']:>9,.0f} {total:>8,.0f} "
                  f"{1e6 / total:>12,.0f} (×{first / total:.2f})")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(machine.describe())


if __name__ == "__main__":
    main()
