"""Who owns a temporary or a lock: this host's name and whether a process of it still runs.

Temporaries (``.NAME.tmp-HOST.PID.RANDOM``) and leases (``HOST PID RANDOM``) are named
after their owner, so a run can tell a dead run's leftovers from a live one's.
"""

from __future__ import annotations

import os
import re
import socket

__all__ = ["host", "running"]


def host() -> str:
    """This machine's name, made safe for a file name (at most 40 characters)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:40] or "host"


def running(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
