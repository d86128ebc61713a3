"""Is the process that left a lock, a pid file or a leftover still there? Which processes name something?"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as dead: PID 1 on some hosts never reaps orphans."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def command_lines() -> Iterator[tuple[int, bytes]]:
    """(pid, NUL-separated command line) of every process on the host but this one (one that ends meanwhile, or
    that is not ours to read, is left out)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            yield int(entry.name), (entry / "cmdline").read_bytes()
        except OSError:
            continue


def kill(pid: int, wait: float = 5.0) -> bool:
    """SIGKILL, then wait (briefly) until it is gone or a zombie; False if it was gone or is not ours to kill."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + wait
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def session_id(pid: int) -> int:
    """The session `pid` belongs to (-1 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[3])  # after the command name, which may hold spaces
    except (OSError, ValueError, IndexError):
        return -1


def owned(pid: int) -> bool:
    """True when `pid` runs as this process's user (another user's process is never ours to kill)."""
    try:
        return Path(f"/proc/{pid}").stat().st_uid == os.getuid()
    except OSError:
        return False
