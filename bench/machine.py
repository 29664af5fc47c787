"""The machine's speed, printed beside every figure: the same hardware runs twice as fast on one day as on another."""

from __future__ import annotations

import os
import platform
import time

#: Iterations of the yardstick loop: long enough to time, short enough to run beside every figure.
YARDSTICK_LOOPS = 2_000_000


def yardstick_ms() -> float:
    """Time a fixed pure-Python loop, best of three: lower is a faster machine at this moment."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(YARDSTICK_LOOPS):
            total += i & 7
        best = min(best, time.perf_counter() - started)
    return best * 1000


def describe() -> str:
    """Describe the machine and how fast it runs now."""
    return (f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
            f"speed: a fixed Python loop in {yardstick_ms():.0f} ms (lower is faster)")
