"""The local target's parameter store: .bakery/params/<env>/, what `bake.py param set` writes and the instances read.

Layout (Contract 3, docs/environments.md): ssm/<name without the leading />.json and secretsmanager/<name>.json
(a '/' in a name is a folder). A file is {"name", "type", "value", "version", "modified", "by", "history"} with the
history's versions, times and writers but never a value. Folders 0700 and files 0600, owned by whoever runs bakery
(root on a host that runs podman as root): the instances get the store read-only at /etc/bakery/params. Every write
is a new file renamed over the old one in the same folder (bakery.files.write_atomically): a reader, or a crash,
sees the old version or the new one.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bakery.errors import ConfigError
from bakery.files import write_atomically
from bakery.params import names

DIR_MODE, FILE_MODE = 0o700, 0o600


def who() -> str:
    """user@host: who wrote a version (recorded with it)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalStore:
    """One environment's store; `root` is .bakery/params/<env>."""

    def __init__(self, root: Path, user: str | None = None):
        self.root = root
        self.user = user

    def ensure(self) -> Path:
        """The store's folder, made (0700) when missing, so that the instances' read-only mount always works."""
        self._folder(self.root)
        return self.root

    def path_of(self, ref: names.Reference) -> Path:
        """Where a parameter lives: only ever under root (the name is checked again, never trusted)."""
        names.check(ref, "param")
        if ref.group:
            raise ConfigError(f"param: {ref} is a group (every parameter under {ref.name}); give one parameter, "
                              f"like {ref}NAME")
        segments = ref.name.strip("/").split("/")
        return self.root.joinpath(ref.kind, *segments[:-1], f"{segments[-1]}.json")

    def get(self, ref: names.Reference, reveal: bool = False) -> dict[str, Any] | None:
        """The parameter's record (its value included: the caller decides what to show), None when it has none."""
        path = self.path_of(ref)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read it as a parameter ({exc}); fix or remove the file") from None
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise ConfigError(f"{path}: not a parameter record (no version); fix or remove the file")
        return data

    def list_group(self, ref: names.Reference) -> list[str]:
        """The names of the parameters directly under a group reference (not recursive), sorted."""
        folder = self.root.joinpath("ssm", *ref.name.strip("/").split("/"))
        if not folder.is_dir():
            return []
        return sorted(f"{ref.name}{p.stem}" for p in folder.glob("*.json") if p.is_file())

    def put(self, ref: names.Reference, value: str, kind: str) -> dict[str, Any]:
        """Write a new version; returns the record (with the value: the caller shows only its metadata). Two at once
        take turns (an flock on <root>/.lock), so each gets its own version and none is lost."""
        path = self.path_of(ref)
        self.ensure()
        with os.fdopen(os.open(self.root / ".lock", os.O_WRONLY | os.O_CREAT, FILE_MODE), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._put(ref, path, value, kind)

    def _put(self, ref: names.Reference, path: Path, value: str, kind: str) -> dict[str, Any]:
        old = self.get(ref)
        version = (old["version"] if old else 0) + 1
        entry = {"version": version, "modified": utc_now(), "by": self.user or who()}
        history = [*((old or {}).get("history") or []), entry]
        record = {"name": ref.name, "type": kind, "value": value, **entry, "history": history}
        for folder in reversed([self.root, *[p for p in path.parents if self.root in p.parents]]):
            self._folder(folder)
        write_atomically(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n", mode=FILE_MODE)
        return record

    @staticmethod
    def _folder(folder: Path) -> None:
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if folder.stat().st_mode & 0o777 != DIR_MODE:
            os.chmod(folder, DIR_MODE)
