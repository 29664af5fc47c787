"""Run the timing-sensitive tests again and again beside busy loops: they must hold on a loaded machine.

    python -m bench.timing                 # 20 runs beside two busy loops
    python -m bench.timing --runs 5 --busy 4

Each run is a fresh pytest process over the rate limiter's, the circuit breaker's and the
end-to-end rate-limit tests. The busy loops burn the CPU for as long as the runs last and stop
with them. Prints each run's outcome and the count of green runs; exits 1 unless all are green.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time

TESTS = ["tests/test_ratelimit.py", "tests/test_circuit_breaker.py", "tests/test_ratelimit_end_to_end.py"]


def burn(stop: multiprocessing.Event) -> None:
    """Keep one core busy until told to stop."""
    while not stop.is_set():
        sum(range(10_000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--busy", type=int, default=2, help="busy loops beside the tests")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    loops = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.busy)]
    for loop in loops:
        loop.start()
    green = 0
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *TESTS],
                                  capture_output=True, text=True)
            summary = next((line for line in reversed(done.stdout.splitlines()) if " passed" in line or " failed" in line), "no summary")
            green += done.returncode == 0
            print(f"run {run}: {'green' if done.returncode == 0 else 'RED'} in {time.monotonic() - started:.0f} s: {summary}", flush=True)
            if done.returncode:
                print(done.stdout[-3000:], flush=True)
    finally:
        stop.set()
        for loop in loops:
            loop.join()
    print(f"{green} of {args.runs} runs green beside {args.busy} busy loops")
    return 0 if green == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
