"""Processes and sockets of the tests' own Ray clusters, read from /proc and `ss`.

Why by process tree: other Ray instances may run on the same machine (a developer's, a
benchmark's); a test asserts on the processes it started, never on everything named ray.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): a pid with another start time
    is another process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(*roots: int) -> set[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def alive(pid: int, start: int | None) -> bool:
    """Still running (not a zombie) and still the same process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and start_time(pid) == start


def listeners(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, ss line) of every TCP listener owned by one of ``pids``."""
    ss = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    return [(ln.split()[3], ln) for ln in ss.splitlines()
            if {int(p) for p in re.findall(r"pid=(\d+)", ln)} & pids]


def loopback(local: str) -> bool:
    return local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))
