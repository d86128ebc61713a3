"""One bake at a time on this host picks a version and tags its image.

Versions come from each checkout's own catalog, but `localhost/bakery/<image>:<version>` is one name for the whole
container storage. Two checkouts finishing at once both saw the version free, and the second bake failed after all
its work (measured: 1 of 6 concurrent cold bakes in two checkouts); worse, two `podman tag` of one name would
silently move it to the other checkout's image. Under this lock the version is reserved, the final layer made and
the tag set with no other bake on the host between the check and the tag.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def lock_path() -> Path:
    """Where every bake of this user's container storage meets: root's storage is the host's, a rootless user's
    their own."""
    if os.geteuid() == 0:
        return Path("/run/lock/bakery-image-tags.lock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "bakery-image-tags.lock" if runtime else \
        Path(tempfile.gettempdir()) / f"bakery-image-tags-{os.geteuid()}.lock"


@contextmanager
def image_tags_locked(path: Path | None = None) -> Iterator[None]:
    """Held from the version's reservation until its tag exists (about a second: the final layer's commit)."""
    path = path or lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
