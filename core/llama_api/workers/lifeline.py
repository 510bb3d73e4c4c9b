"""A worker ends when its server ends, even after a `kill -9` of the server: no orphans.

The worker calls `watch_parent()` first thing, before importing or loading anything slow.
On Linux the kernel kills us when the parent dies (prctl PR_SET_PDEATHSIG); elsewhere a
daemon thread polls the parent's pid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def watch_parent(parent_pid: int | None = None, poll_interval: float = 1.0) -> None:
    """End this process (SIGKILL, or exit 1) as soon as `parent_pid` is no longer its parent.

    `parent_pid` is the process that started us (default: the parent now). Pass it when it is
    known, so that a parent that died before this call is noticed too.
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux") and set_parent_death_signal(signal.SIGKILL):
        # The parent may have died before the prctl took effect: then no signal comes, but
        # we have been re-parented (to init or a subreaper) already.
        if os.getppid() != parent_pid:
            os._exit(1)
        return
    thread = threading.Thread(target=poll_parent, args=(parent_pid, poll_interval),
                              name="parent-watch", daemon=True)
    thread.start()


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send `sig` to us when our parent thread exits; False if that failed.

    Note: the kernel tracks the parent *thread*: the server must start workers from a
    thread that lives as long as it does (its event loop thread does).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
            return True
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.warning("prctl is not available (%s); watching the parent by polling", exc)
    return False


def poll_parent(parent_pid: int, poll_interval: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_interval)
    os._exit(1)
