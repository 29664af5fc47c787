"""What the rate limiter costs Redis per job, counted in instructions: the same on a fast or a slow machine.

    python -m bench.limiter_cost [--jobs 300] [--only SCENARIO ...]

Runs an embedded Valkey under callgrind (valgrind) and replays jobs through the limiter alone at
each of bench.ratelimit's scenarios' limits, as the service does (an ADMIT, then, once its start
is due, an ACQUIRE with the circuit breaker's check). Prints the instructions Valkey ran per job
and its script calls per job. Callgrind counts only while a replay runs: the server's start and
the scripts' first load are left out, but its clock's ticks during a replay count, so a slow
limit's replay (which waits for its starts) counts a little more. Seconds on this machine move 2x
from hour to hour; instruction counts repeat to within about 1.5 %, so two versions compare in a
run each.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import redis

from bench import machine
from bench.ratelimit import REPLAY_S, SCENARIOS, Scenario, replay
from devtools import stores

MOST_SLOW_JOBS = 25  # at a few starts a second, a replay of more would take minutes


def under_callgrind(folder: Path) -> stores.EmbeddedServer:
    """Describe an embedded Valkey run by callgrind with nothing counted until told."""
    valkey = stores.valkey(folder / "valkey")
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={folder}/callgrind.out", *valkey.argv]
    return stores.EmbeddedServer("valkey under callgrind", argv, valkey.port, valkey.url)


def control(server: stores.EmbeddedServer, flag: str) -> None:
    """Tell the server's callgrind to zero, start or stop counting, or dump its counts."""
    subprocess.run(["callgrind_control", flag, str(server.process.pid)], check=True, capture_output=True)


def counted(server: stores.EmbeddedServer, folder: Path, client: redis.Redis, scenario: Scenario, jobs: int) -> tuple[int, int]:
    """Replay `jobs` jobs with callgrind counting; return the instructions Valkey ran and its script calls."""
    control(server, "--zero")
    client.config_resetstat()
    control(server, "--instr=on")
    replay(client, scenario, jobs)
    control(server, "--instr=off")
    scripts = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    control(server, "--dump")
    newest = max(folder.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
    totals = [line for line in newest.read_text().splitlines() if line.startswith("totals:")]
    return int(totals[0].split()[1]), scripts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs replayed per scenario, fewer where its limits are slow")
    parser.add_argument("--only", nargs="*", choices=[s.name for s in SCENARIOS], help="run only these scenarios")
    args = parser.parse_args(argv)
    print(machine.describe(), "(callgrind's counts do not depend on it)")
    print("| scenario | rate_limit | jobs | Valkey instructions per job | script calls per job |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        server = under_callgrind(folder).start()
        try:
            client = redis.Redis.from_url(server.url)
            # Loads the scripts (a max_in_flight vendor's RELEASE too) before anything is counted.
            replay(client, next(s for s in SCENARIOS if s.max_in_flight), 1, "warm-up")
            for scenario in (s for s in SCENARIOS if not args.only or s.name in args.only):
                jobs = min(args.jobs, max(MOST_SLOW_JOBS, scenario.allowed(REPLAY_S)))
                instructions, scripts = counted(server, folder, client, scenario, jobs)
                print(f"| {scenario.name} | `{scenario.rate_limit}` | {jobs} | {instructions / jobs:,.0f} | {scripts / jobs:.2f} |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
