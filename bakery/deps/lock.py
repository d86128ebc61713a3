"""requirements.lock: what `bake.py deps` resolved and installed, committed beside requirements.yml.

Written whole or not at all (temp file + rename). Sources are stored with any URL credentials redacted: the lock is
read to decide whether an entry still matches requirements.yml (compared redacted on both sides), never to fetch
from, so rotating a token does not unlock anything and the committed lock never holds a secret, nor anything derived
from one (a hash of a short password is brute-forced offline). What redaction hides is still guarded: the content
digest is, so a changed source that yields other content is refused until `deps --update`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bakery.config import load_yaml
from bakery.deps.paths import LOCK_FILE
from bakery.deps.requirements import ROLE_NAME_RE, TARBALL_SUFFIXES, without_parameters
from bakery.errors import ConfigError
from bakery.files import write_atomically

FORMAT = 1
HEADER = "# written by bake.py deps: commit it; change requirements.yml and run bake.py deps, never edit this file\n"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
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
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {key}.{name}: not a mapping; run: bake.py deps --update {name}")
        _pins(path, f"{key}.{name}", str(name), entry, git=_is_git(key, entry), versioned=_versioned(key, entry))
        entries[str(name)] = {k: str(entry[k]) for k in fields if entry.get(k) is not None}
    return entries


def _is_git(section: str, entry: dict) -> bool:
    if section == "collections":
        return entry.get("type") == "git"
    src = str(entry.get("src", ""))
    return (entry.get("scm") == "git" or src.startswith("git+") or "commit" in entry
            or ("://" in src and "github.com" in src and not without_parameters(src).endswith(TARBALL_SUFFIXES)))


def _versioned(section: str, entry: dict) -> bool:
    """Every collection has a version (its MANIFEST.json's); a role from a Galaxy server has the one it was asked
    for or installed (a tarball role may have none)."""
    src = str(entry.get("src", ""))
    return section == "collections" or (ROLE_NAME_RE.match(src) is not None and "." in src
                                        and not src.endswith(TARBALL_SUFFIXES))


def _pins(path: Path, where: str, name: str, entry: dict, git: bool, versioned: bool) -> None:
    """What makes an entry pin something: a sha256 digest, a 40-hex commit for git, a version string; `commit: main`
    or a missing digest pins nothing, so it is bad input, one line naming the field."""
    checks = [("digest", _DIGEST, "sha256: and 64 hex digits")]
    if git:
        checks.append(("commit", COMMIT_RE, "a 40-hex commit"))
    if versioned:
        checks.append(("version", re.compile(r"\S"), "a version string"))
    for field_name, pattern, what in checks:
        value = entry.get(field_name)
        if value is None or not isinstance(value, str) or not pattern.match(value):
            shown = "is missing" if value is None else f"'{value}' is not {what}"
            raise ConfigError(f"{path}: {where}: {field_name} {shown}; run: bake.py deps --update {name}")


def lock_text(lock: Lock) -> str:
    """The lock file's text: `deps` rewrites a file that differs from it (one with fields no longer written, such as
    the src_sha256 of older versions, included)."""
    data: dict[str, Any] = {"format": FORMAT,
                            "roles": {name: lock.roles[name] for name in sorted(lock.roles)},
                            "collections": {name: lock.collections[name] for name in sorted(lock.collections)}}
    return HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_lock(root: Path, lock: Lock) -> None:
    write_atomically(root / LOCK_FILE, lock_text(lock))
