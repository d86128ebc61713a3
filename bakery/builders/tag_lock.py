"""One bake at a time on this host picks a version and tags its image.

Versions come from each checkout's own catalog, but `localhost/bakery/<image>:<version>` is one name for the whole
container storage. Two checkouts finishing at once both saw the version free, and the second bake failed after all
its work (measured: 1 of 6 concurrent cold bakes in two checkouts); worse, two `podman tag` of one name would
silently move it to the other checkout's image. Under this lock the version is reserved, the final layer made and
the tag set with no other bake on the host between the check and the tag.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bakery.errors import OperationError
from bakery.flocks import lock_waiting


def lock_dir() -> Path:
    """Beside what it guards: root's container storage is the host's (/run/bakery, not the world-writable
    /run/lock, where anyone could create and hold the file); a rootless user's is under their data home, as
    podman's own is, whatever session (cron, ssh, sudo -u) the bake runs in."""
    if os.geteuid() == 0:
        return Path("/run/bakery")
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "bakery"


@contextmanager
def image_tags_locked(directory: Path | None = None, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Held from the version's reservation until its tag exists (about a second: the final layer's commit);
    `on_wait` runs once if another bake holds it."""
    directory = directory or lock_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise OperationError(f"{directory} must be a directory of uid {os.geteuid()} that no one else can write "
                             "(it holds the host's image-tag lock); remove it and bake again")
    fd = os.open(directory / "image-tags.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        lock_waiting(fd, on_wait=on_wait)
        yield
    finally:
        os.close(fd)  # closing releases the lock
