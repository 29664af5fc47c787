"""Give the worker's processes less of the CPU than the API where they share a host.

A client waits on the API's answer; a job waits in a queue paced by its vendor's limits anyway
(docs/decisions/0015-the-worker-yields-the-cpu.md).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")
# The kernel takes one autogroup change every 100 ms from a process without CAP_SYS_ADMIN, host-wide.
AUTOGROUP_TRIES, AUTOGROUP_RETRY_S = 5, 0.1


def lower_priority(niceness: int) -> None:
    """Raise this process's nice value to `niceness`, and its session's if the worker's parent leads that session.

    Under Linux's autogroup scheduling, on in most kernels for processes outside a CPU cgroup, a
    nice value counts only against the processes of its own session; sessions share the CPU by the
    session's own nice value. honcho starts each Procfile line in a session of its own, led by the
    worker's parent once the line execs it. A worker started from a shell shares the shell's
    session, whose weight it leaves alone. Neither value is ever lowered.
    """
    if niceness > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    if os.getsid(0) not in (os.getpid(), os.getppid()) or not AUTOGROUP.exists():
        return
    for _ in range(AUTOGROUP_TRIES):
        try:
            if niceness > session_nice():
                AUTOGROUP.write_text(str(niceness))
            return
        except OSError as error:
            if error.errno != errno.EAGAIN:
                log.warning("the session's CPU weight is left as it is: %s", error)
                return
        time.sleep(AUTOGROUP_RETRY_S)
    log.warning("the session's CPU weight is left as it is: the kernel refused %d changes in a row", AUTOGROUP_TRIES)


def session_nice(pid: int | str = "self") -> int:
    """Return the nice value of a process's session (its autogroup), this process's by default."""
    return int(re.search(r"nice (-?\d+)", Path(f"/proc/{pid}/autogroup").read_text()).group(1))
