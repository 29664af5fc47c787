"""The worker yields the CPU to the API: its own nice value, and its session's where it leads that session."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
AUTOGROUP = Path("/proc/self/autogroup")
# Lowers its priority as a worker process does at start-up, then reports its nice value and its session's.
PROBE = """
import os, sys
from pathlib import Path
from actors.priority import lower_priority
lower_priority(int(sys.argv[1]))
group = Path("/proc/self/autogroup")
print(os.getpriority(os.PRIO_PROCESS, 0), group.read_text().strip() if group.exists() else "")
"""


def lowered(niceness: int, **popen) -> tuple[int, int | None]:
    """Run the probe in a new process; return its nice value and its session's (None without autogroup)."""
    output = subprocess.run(
        [sys.executable, "-c", PROBE, str(niceness)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60, **popen,
    ).stdout.split(maxsplit=1)
    return int(output[0]), session_nice(output[1]) if len(output) > 1 else None


def session_nice(autogroup: str) -> int:
    return int(re.search(r"nice (-?\d+)", autogroup).group(1))


def test_a_worker_leading_its_session_lowers_itself_and_the_session():
    own, session = lowered(10, start_new_session=True)  # as honcho starts each process
    assert own == 10
    if AUTOGROUP.exists():
        assert session == 10


def test_a_worker_in_someone_elses_session_leaves_that_session_alone():
    if os.getsid(0) == os.getpid():
        pytest.skip("the tests lead their own session: the probe's parent would lead it")
    before = session_nice(AUTOGROUP.read_text()) if AUTOGROUP.exists() else None
    own, session = lowered(10)
    assert own == 10
    assert session == before


def test_a_lower_priority_set_from_outside_is_kept():
    own, _ = lowered(10, start_new_session=True, preexec_fn=lambda: os.nice(15))
    assert own == 15


def test_worker_nice_is_a_nice_value():
    key = {"ENCRYPTION_KEY": "k"}
    assert Config.from_env(key).worker_nice == 10
    assert Config.from_env({**key, "WORKER_NICE": "0"}).worker_nice == 0
    for wrong in ("20", "-1"):
        with pytest.raises(ConfigError, match="WORKER_NICE must be from 0 to 19"):
            Config.from_env({**key, "WORKER_NICE": wrong})
