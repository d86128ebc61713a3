"""Does what is installed under .bakery/galaxy match requirements.lock? Asked by every bake and by `deps --check`.

A bake may use only what a reviewer can see in the lock: a requirement that is not locked, a locked one that is not
installed or whose installed files differ, and anything installed that the lock does not list, stop it with one line
naming the role or collection and the command that fixes it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bakery.deps.digest import installed_digest
from bakery.deps.lock import Lock, read_lock
from bakery.deps.paths import REQUIREMENTS_FILE, galaxy_collections_dir, galaxy_dir, galaxy_roles_dir
from bakery.deps.requirements import (
    CollectionRequirement,
    Requirements,
    RoleRequirement,
    load_requirements,
    redact,
)
from bakery.errors import ConfigError
from bakery.flocks import lock_waiting

log = logging.getLogger("bakery.deps")


@dataclass(frozen=True)
class Problem:
    name: str
    kind: str  # not-locked, changed, missing, differs, extra, stale
    message: str
    blocking: bool = True  # False: tidy-up `deps` does, harmless to a bake


def role_dir(root: Path, name: str) -> Path:
    return galaxy_roles_dir(root) / name


def collection_dir(root: Path, fqcn: str) -> Path:
    namespace, _, name = fqcn.partition(".")
    return galaxy_collections_dir(root) / "ansible_collections" / namespace / name


def role_matches(req: RoleRequirement, entry: dict[str, str] | None) -> bool:
    """The lock entry was made from this requirement as it is written now (a changed src or version re-resolves).
    Sources compare redacted: a rotated token is the same requirement, so plain `deps` keeps the locked commit, and a
    source whose hidden part now yields other content is refused by its digest (sync._checked)."""
    return (entry is not None and entry.get("src") == redact(req.src) and entry.get("scm") == req.scm
            and (req.version is None or entry.get("version") == req.version))


def collection_key(req: CollectionRequirement, lock: Lock | None) -> str | None:
    """The lock's name for a collection requirement: its own name, or the one locked from the same source."""
    if req.name or lock is None:
        return req.name
    return next((k for k, e in lock.collections.items() if e.get("source") == redact(req.source)), None)


def collection_matches(req: CollectionRequirement, entry: dict[str, str] | None) -> bool:
    return (entry is not None and entry.get("source") == redact(req.source) and entry.get("type") == req.kind
            and entry.get("requested") == req.version)


def problems(root: Path) -> list[Problem]:
    """Every difference between requirements.yml, requirements.lock and .bakery/galaxy, in that order."""
    reqs = load_requirements(root) or Requirements((), ())
    lock = read_lock(root)
    if lock is None:
        if reqs.roles or reqs.collections:
            return [Problem("requirements.yml", "not-locked", "requirements.yml is not locked; run: bake.py deps")]
        lock = Lock()  # nothing required: anything installed is still reported (a bake would use it)
    found: list[Problem] = []
    wanted_roles, wanted_collections = set(), set()
    for role in reqs.roles:
        wanted_roles.add(role.name)
        entry = lock.roles.get(role.name)
        if not role_matches(role, entry):
            found.append(_unlocked(role.name, entry is not None))
        elif (root / "roles" / role.name).exists():
            found.append(Problem(role.name, "shadowed", f"roles/{role.name} shadows the locked role {role.name}: "
                                                        "rename one of them or drop it from requirements.yml"))
        else:
            found += _installed(role.name, "role", role_dir(root, role.name), entry, root)
    for coll in reqs.collections:
        key = collection_key(coll, lock)
        entry = lock.collections.get(key) if key else None
        if key is not None:
            wanted_collections.add(key)  # reported here once, not again as a leftover
        if key is None or not collection_matches(coll, entry):
            found.append(_unlocked(key or coll.label, entry is not None))
            continue
        found += _installed(key, "collection", collection_dir(root, key), entry, root)
    found += _leftovers(root, lock, wanted_roles, wanted_collections)
    return found


def _unlocked(name: str, changed: bool) -> Problem:
    if changed:
        return Problem(name, "changed", f"requirement '{name}' in requirements.yml differs from requirements.lock; "
                                        f"run: bake.py deps --update {name}")
    return Problem(name, "not-locked", f"requirement '{name}' is not in requirements.lock; "
                                       f"run: bake.py deps --update {name}")


def _installed(name: str, what: str, path: Path, entry: dict[str, str] | None, root: Path) -> list[Problem]:
    assert entry is not None
    if not path.is_dir():
        return [Problem(name, "missing", f"'{name}' is not installed; run: bake.py deps")]
    if installed_digest(path) != entry["digest"]:
        return [Problem(name, "differs", f"installed {what} '{name}' ({path.relative_to(root)}) differs from "
                                         f"requirements.lock: run bake.py deps to reinstall the locked version, "
                                         f"or bake.py deps --update {name}")]
    return []


def installed_roles(root: Path) -> list[str]:
    base = galaxy_roles_dir(root)
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []


def installed_collections(root: Path) -> list[str]:
    base = galaxy_collections_dir(root) / "ansible_collections"
    if not base.is_dir():
        return []
    return sorted(f"{ns.name}.{coll.name}" for ns in base.iterdir() if ns.is_dir() and "." not in ns.name
                  for coll in ns.iterdir() if coll.is_dir())


def _leftovers(root: Path, lock: Lock, roles: set[str], collections: set[str]) -> list[Problem]:
    """A lock entry no longer required is only tidy-up while nothing of it is installed; anything installed that is
    not required and locked would be resolved by a bake unchecked, so it stops the bake."""
    found = []
    installed = {"role": installed_roles(root), "collection": installed_collections(root)}
    for what, locked, required in (("role", lock.roles, roles), ("collection", lock.collections, collections)):
        where = f".bakery/galaxy/{what}s"
        for name in sorted(set(locked) - required - set(installed[what])):
            found.append(Problem(name, "stale", f"{what} '{name}' is in requirements.lock but not in "
                                                "requirements.yml; run: bake.py deps", blocking=False))
        for name in installed[what]:
            if name in required:
                continue
            why = "no longer in requirements.yml" if name in locked else "not in requirements.lock"
            found.append(Problem(name, "extra", f"{what} '{name}' is installed in {where} but {why}; run: "
                                                "bake.py deps (removes it) or list it in requirements.yml"))
    return found


def check_lock(project_root: Path) -> dict[str, str]:
    """Raise ConfigError (one line) on the first thing that makes the installed requirements differ from the lock;
    return {name: "version[@commit12] digest"} of every locked role and collection for provenance ({} without
    requirements.yml)."""
    found = problems(project_root)
    for problem in found:
        if problem.blocking:
            raise ConfigError(problem.message)
    lock = read_lock(project_root) if load_requirements(project_root) is not None else None
    if lock is None:
        return {}
    stale = {p.name for p in found if p.kind == "stale"}
    return {name: _describe(entry) for name, entry in sorted({**lock.roles, **lock.collections}.items())
            if name not in stale}


def _describe(entry: dict[str, str]) -> str:
    commit = f"@{entry['commit'][:12]}" if entry.get("commit") else ""
    return f"{entry.get('version', 'unversioned')}{commit} {entry['digest']}"


def locked_collections(project_root: Path) -> dict[str, str]:
    """{"ns.coll": digest} from the lock ({} when there is none): what a layer key may include."""
    lock = read_lock(project_root)
    return {name: entry["digest"] for name, entry in sorted(lock.collections.items())} if lock else {}


@contextmanager
def shared_lock(project_root: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Held by a bake for its whole run: `bake.py deps` (exclusive on the same file) waits for it, so no install is
    swapped while a bake reads .bakery/galaxy; on_wait is called once when a running deps holds it first. Nothing is
    created for a project without requirements."""
    if not galaxy_dir(project_root).is_dir() and not (project_root / REQUIREMENTS_FILE).is_file():
        yield
        return
    with _flocked(project_root, fcntl.LOCK_SH, on_wait):
        yield


@contextmanager
def exclusive_lock(project_root: Path, on_wait: Callable[[], None] | None) -> Iterator[None]:
    """Held by `bake.py deps` while it reads and rewrites requirements.lock and .bakery/galaxy; on_wait is called once
    when a bake (or another deps) holds the lock first."""
    with _flocked(project_root, fcntl.LOCK_EX, on_wait):
        yield


@contextmanager
def _flocked(root: Path, mode: int, on_wait: Callable[[], None] | None) -> Iterator[None]:
    fd = _open_lock_file(galaxy_dir(root) / ".deps.lock", mode)
    if fd is None:
        yield
        return
    with os.fdopen(fd, "rb") as handle:
        lock_waiting(handle, mode, on_wait)
        yield  # closing the file releases the lock


def _open_lock_file(path: Path, mode: int) -> int | None:
    """A bake needs no write access to .bakery/galaxy: an existing lock file is opened read-only (flock needs no
    more), and one that cannot be created leaves the bake unlocked with a warning (nothing can run deps there
    either); deps, which rewrites the directory, stops instead."""
    if mode == fcntl.LOCK_SH:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot open %s (%s): baking without the deps lock", path, exc.strerror or exc)
            return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if mode != fcntl.LOCK_SH:
            raise ConfigError(f"{path}: cannot create the deps lock ({exc.strerror or exc}); make .bakery/galaxy "
                              "writable to run bake.py deps") from exc
        log.warning("cannot create %s (%s): baking without the deps lock", path, exc.strerror or exc)
        return None
