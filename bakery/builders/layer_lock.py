"""While a bake of an image runs, the checkout's cached layers of that image stay: gc leaves them alone meanwhile.

A bake chooses its cached layers (by id: bakery.builders.podman, `_first_uncached`) well before a container starts
from one, and a bake whose every layer is cached uses its last one only at the final commit, after waiting for the
host's image-tag lock; until then nothing in podman shows the layers are needed. Every bake holds a shared flock
on `.bakery/locks/layers-<image>.lock` from before it chooses them to its end; `gc --keep` removes an image's
layers only while it holds that lock exclusively, and leaves them for a later gc when a bake holds it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bakery.flocks import try_lock


def _path(state_dir: Path, image: str) -> Path:
    return state_dir / "locks" / f"layers-{image}.lock"


def _open(state_dir: Path, image: str) -> int:
    path = _path(state_dir, image)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextmanager
def layers_in_use(state_dir: Path, image: str) -> Iterator[None]:
    """A bake's hold on its image's cached layers (shared: bakes of one image run side by side). It waits only
    while a gc removes that image's layers, a few seconds at most."""
    fd = _open(state_dir, image)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def layers_unused(state_dir: Path, image: str) -> Iterator[bool]:
    """gc's hold on an image's cached layers: True when no bake of the image runs (and none starts until the end
    of the block), False at once when one does."""
    fd = _open(state_dir, image)
    try:
        yield try_lock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def bake_running(state_dir: Path, image: str) -> bool:
    """Whether a bake of `image` runs in the checkout of `state_dir` now; reads only (no lock file is made in a
    checkout that has none: a bake makes it before it commits anything)."""
    try:
        fd = os.open(_path(state_dir, image), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # a lock this user cannot read: not known to be free
    try:
        return not try_lock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)
