"""requirements.lock: what `bake.py deps` resolved and installed, committed beside requirements.yml.

Written whole or not at all (temp file + rename). Sources are stored with any URL credentials redacted: the lock is
read to decide whether an entry still matches requirements.yml (compared redacted on both sides), never to fetch
from, so rotating a token does not unlock anything and the committed lock never holds a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bakery.config import load_yaml
from bakery.deps.paths import LOCK_FILE
from bakery.errors import ConfigError
from bakery.files import write_atomically

FORMAT = 1
HEADER = "# written by bake.py deps: commit it; change requirements.yml and run bake.py deps, never edit this file\n"
ROLE_FIELDS = ("src", "scm", "version", "commit", "digest")
COLLECTION_FIELDS = ("source", "type", "version", "requested", "commit", "digest")


@dataclass
class Lock:
    roles: dict[str, dict[str, str]] = field(default_factory=dict)
    collections: dict[str, dict[str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.roles) + len(self.collections)


def read_lock(root: Path) -> Lock | None:
    """The lock, or None when there is none; a damaged lock is bad input (exit 2), never guessed at."""
    path = root / LOCK_FILE
    if not path.is_file():
        return None
    data = load_yaml(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a format {FORMAT} requirements.lock; restore it from git or delete it and "
                          "run: bake.py deps")
    return Lock(roles=_section(path, data, "roles", ROLE_FIELDS),
                collections=_section(path, data, "collections", COLLECTION_FIELDS))


def _section(path: Path, data: dict, key: str, fields: tuple[str, ...]) -> dict[str, dict[str, str]]:
    section = data.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {key}: must be a mapping; restore it from git or delete it and run: bake.py deps")
    entries: dict[str, dict[str, str]] = {}
    for name, entry in section.items():
        if not isinstance(entry, dict) or not str(entry.get("digest", "")).startswith("sha256:"):
            raise ConfigError(f"{path}: {key}.{name}: no digest; restore it from git or delete it and run: "
                              "bake.py deps")
        entries[str(name)] = {k: str(entry[k]) for k in fields if entry.get(k) is not None}
    return entries


def write_lock(root: Path, lock: Lock) -> None:
    data: dict[str, Any] = {"format": FORMAT,
                            "roles": {name: lock.roles[name] for name in sorted(lock.roles)},
                            "collections": {name: lock.collections[name] for name in sorted(lock.collections)}}
    write_atomically(root / LOCK_FILE, HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
