"""flock(2) as bakery's locks take it: try first, and tell the user before waiting for another holder."""

from __future__ import annotations

import errno
import fcntl
from collections.abc import Callable
from typing import IO


def try_lock(fd: int | IO[bytes], mode: int = fcntl.LOCK_EX) -> bool:
    """Take the lock without waiting: False if another process holds it (any other failure raises)."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return False
    return True


def lock_waiting(fd: int | IO[bytes], mode: int = fcntl.LOCK_EX, on_wait: Callable[[], None] | None = None) -> None:
    """Take the lock; if another process holds it, call `on_wait` once (to say so), then wait for it."""
    if not try_lock(fd, mode):
        if on_wait is not None:
            on_wait()
        fcntl.flock(fd, mode)
