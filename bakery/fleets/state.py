"""What an environment keeps on this host, whatever its target: its lock and the refresh in progress.

Both live in .bakery/envs/<env>/. `lock` is a flock held by the one bake.py changing the
environment (its pid written in it, for messages); closing the file releases it, and so
does the process dying (kill -9 included), so a dead process never leaves an environment
locked. `refresh.json` is the refresh in progress, written atomically after every decision:
the next command finishes it (local: the rolling refresh resumes) or re-attaches to it
(aws: the instance refresh goes on at AWS). Both fleets use one EnvironmentState each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bakery.errors import OperationError
from bakery.files import write_atomically
from bakery.flocks import try_lock


def environment_folder(state_dir: Path, env_name: str) -> Path:
    return state_dir / "envs" / env_name


class EnvironmentState:
    """The lock and the saved refresh of one environment."""

    def __init__(self, folder: Path, env_name: str):
        self.folder = folder
        self.env_name = env_name
        self.lock_file = folder / "lock"
        self.refresh_file = folder / "refresh.json"
        self.held = False  # this object holds the environment's lock

    # ---- the lock

    @contextmanager
    def _flock(self) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not try_lock(fd):
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.held = True
            try:
                yield True
            finally:
                self.held = False
        finally:
            os.close(fd)  # closing releases the lock; so does the process dying (kill -9 included)

    def holder(self) -> int | None:
        """The pid of the bake.py that holds (or last held) the lock."""
        try:
            return int(self.lock_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive hold for one changing command; fails at once, naming the holder, when another has it."""
        with self._flock() as acquired:
            if not acquired:
                raise OperationError(f"environment '{self.env_name}' is busy: another bake.py "
                                     f"(pid {self.holder() or '?'}) is changing it; wait for it, or watch it with: "
                                     f"./bake.py status --env {self.env_name}")
            yield

    @contextmanager
    def try_lock(self) -> Iterator[bool]:
        """Like lock() but yields False when another command holds it (True at once when this object does)."""
        if self.held:
            yield True
            return
        with self._flock() as acquired:
            yield acquired

    # ---- the refresh in progress

    def read_refresh(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.refresh_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OperationError(f"{self.refresh_file}: unreadable refresh state ({exc}); move it aside and run the "
                                 "deploy again") from exc

    def save_refresh(self, data: dict[str, Any]) -> None:
        write_atomically(self.refresh_file, json.dumps(data, indent=2, sort_keys=True))

    def forget_refresh(self) -> None:
        self.refresh_file.unlink(missing_ok=True)
