"""Give the worker's processes less of the CPU than the API where they share a host.

A client waits on the API's answer; a job waits in a queue paced by its vendor's limits anyway
(docs/decisions/0015-the-worker-yields-the-cpu.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def lower_priority(niceness: int) -> None:
    """Raise this process's nice value to `niceness`, and its session's if the worker leads that session.

    Under Linux's autogroup scheduling, on in most kernels for processes outside a CPU cgroup, a
    nice value counts only against the processes of its own session; sessions share the CPU by the
    session's own nice value. honcho and most supervisors start each process in a session of its
    own, led by the worker's parent. A worker started from a shell shares the shell's session,
    whose weight it leaves alone.
    """
    if niceness > os.getpriority(os.PRIO_PROCESS, 0):  # never raise a priority someone lowered
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    if os.getsid(0) not in (os.getpid(), os.getppid()):
        return
    try:
        Path("/proc/self/autogroup").write_text(str(niceness))
    except OSError as error:  # no autogroup in this kernel, or in a cgroup where it does not apply
        log.debug("session's CPU weight left as it is: %s", error)
