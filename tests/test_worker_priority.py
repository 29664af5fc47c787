"""The worker yields the CPU to the API: its own nice value, and its session's where its parent leads that session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.priority import AUTOGROUP, lower_priority, session_nice
from devtools.stack import ROOT, Stack, free_ports, service_env, vendors_toml, wait_until
from service.config import Config, ConfigError

# Lowers its priority as a worker process does at start-up, then reports its nice value and its session's.
PROBE = """
import os, sys
from actors.priority import lower_priority, session_nice
lower_priority(int(sys.argv[1]))
print(os.getpriority(os.PRIO_PROCESS, 0), session_nice())
"""
# Runs the command in its arguments as a child: a process between a probe and its session's leader.
PARENT = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"

pytestmark = pytest.mark.skipif(not AUTOGROUP.exists(), reason="the kernel has no autogroup scheduling")


def lowered(niceness: int, *, depth: int = 1, preexec_fn=None) -> tuple[int, int]:
    """Run the probe `depth` processes down from a new session's leader; return its nice value and the session's."""
    argv = [sys.executable, "-c", PROBE, str(niceness)]
    for _ in range(depth):
        argv = [sys.executable, "-c", PARENT, *argv]
    output = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60, start_new_session=True, preexec_fn=preexec_fn,
    ).stdout
    own, session = output.split()
    return int(own), int(session)


def test_a_worker_whose_parent_leads_its_session_lowers_itself_and_the_session():
    assert lowered(10) == (max(10, os.getpriority(os.PRIO_PROCESS, 0)), 10)  # as honcho starts a Procfile line


def test_a_worker_further_down_a_session_leaves_that_session_alone():
    own, session = lowered(10, depth=2)  # say a shell, then a script, then the worker
    assert own == max(10, os.getpriority(os.PRIO_PROCESS, 0))
    assert session == 0


def test_a_lower_priority_set_from_outside_is_kept():
    # The probe's new session, led by its parent, lowered to 15 as an operator's `nice` or a supervisor would.
    assert lowered(10, preexec_fn=lambda: lower_priority(15)) == (15, 15)


def test_the_worker_processes_take_worker_nice_at_start_up(redis_url, mongodb_uri, tmp_path):
    api_port, sync_port, async_port = free_ports(3)
    registry = tmp_path / "vendors.toml"
    registry.write_text(vendors_toml(sync_port, async_port))
    stack = Stack({**service_env(redis_url, mongodb_uri, registry, api_port), "WORKER_NICE": "7"}, tmp_path)
    try:
        worker = stack.start_worker(processes=1, threads=1, queues=("priority-probe",))  # a queue nothing else uses
        children = Path(f"/proc/{worker.process.pid}/task/{worker.process.pid}/children")

        def reniced_child() -> int | None:
            pids = [int(pid) for pid in children.read_text().split()]
            return pids[0] if pids and os.getpriority(os.PRIO_PROCESS, pids[0]) == 7 else None

        child = wait_until(reniced_child, 60, "a worker process at nice 7", interval_s=0.1)
        assert session_nice(child) == 7
    finally:
        stack.stop()


def test_worker_nice_is_a_nice_value():
    key = {"ENCRYPTION_KEY": "k"}
    assert Config.from_env(key).worker_nice == 10
    assert Config.from_env({**key, "WORKER_NICE": "0"}).worker_nice == 0
    for wrong in ("20", "-1"):
        with pytest.raises(ConfigError, match="WORKER_NICE must be from 0 to 19"):
            Config.from_env({**key, "WORKER_NICE": wrong})
