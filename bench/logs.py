"""What one of the service's JSON log lines costs, with the record's unused fields collected or not.

    python -m bench.logs [--lines 20000] [--rounds 4]

Logs a worker's "job processing" line through `service.logs.configure_logging`'s own handler and
formatter, written to /dev/null, in alternating rounds: as configured (the caller, thread and
multiprocessing names not collected), and with the standard library's defaults that collect them.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from bench import machine
from service.logs import about_job, configure_logging

REQUEST_ID = "0b8f3c9e-1234-4567-89ab-0123456789ab"
DEFAULT_SRCFILE = logging._srcfile


def per_line_us(log: logging.Logger, lines: int) -> float:
    started = time.perf_counter()
    with about_job(REQUEST_ID, "sync"):
        for _ in range(lines):
            log.info("job %s", "processing", extra={"request_id": REQUEST_ID, "state": "processing", "detail": None})
    return (time.perf_counter() - started) / lines * 1e6


def collect_all(on: bool) -> None:
    """Collect what the standard library collects by default (on), or what configure_logging leaves (off)."""
    logging._srcfile = DEFAULT_SRCFILE if on else None
    logging.logThreads = logging.logMultiprocessing = on


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(machine.describe())
    configure_logging("INFO")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))
    log = logging.getLogger("service.store")
    figures: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for on in (False, True):
            collect_all(on)
            figures[on].append(per_line_us(log, args.lines))
    for on, label in ((False, "as configured"), (True, "collecting the caller, thread and process names")):
        print(f"{label}: {', '.join(f'{us:.1f}' for us in figures[on])} µs a line")
    print(machine.describe())


if __name__ == "__main__":
    main()
