"""`bake.py deps`: make .bakery/galaxy and requirements.lock match requirements.yml.

What is installed and matches its lock entry is left alone (no ansible-galaxy run, no network); what is missing or
differs is reinstalled at its locked version; what is new, changed in requirements.yml or named with --update is
resolved afresh (a git ref to its commit) and locked. Everything is installed into a staging directory first and
renamed into place only once every install succeeded, so a failed or interrupted run leaves the previous installs
and the lock as they were.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bakery.deps import install
from bakery.deps.digest import installed_digest
from bakery.deps.gate import (
    collection_dir,
    collection_key,
    collection_matches,
    exclusive_lock,
    installed_collections,
    installed_roles,
    role_dir,
    role_matches,
)
from bakery.deps.lock import Lock, lock_text, read_lock, write_lock
from bakery.deps.paths import LOCK_FILE, REQUIREMENTS_FILE, galaxy_collections_dir, galaxy_dir, galaxy_roles_dir
from bakery.deps.requirements import CollectionRequirement, Requirements, RoleRequirement, load_requirements, redact
from bakery.errors import ConfigError, OperationError
from bakery.signals import cancellable


@dataclass
class Outcome:
    installed: dict[str, str] = field(default_factory=dict)  # name -> "version[@commit12]"
    removed: list[str] = field(default_factory=list)
    was_locked: set[str] = field(default_factory=set)  # removed names the previous lock listed
    unchanged: list[str] = field(default_factory=list)
    lock_written: bool = False

    def removal_lines(self) -> list[str]:
        """One line per removed name: dropped from requirements.yml, or installed without ever being locked."""
        return [f"removed {name} (no longer in requirements.yml)" if name in self.was_locked
                else f"removed {name} (not in requirements.lock)" for name in sorted(self.removed)]


@dataclass
class _Work:
    root: Path
    staging: Path
    lock: Lock = field(default_factory=Lock)
    moves: list[tuple[Path, Path]] = field(default_factory=list)  # staged -> final
    outcome: Outcome = field(default_factory=Outcome)


def sync(root: Path, update: tuple[str, ...] = (), on_wait: Callable[[], None] | None = None) -> Outcome:
    """Install and lock; raises ConfigError for bad input before anything is written. Everything is read under the
    exclusive lock (a bake holds it shared), so what is decided is what is still there when it is written."""
    if not any(path.exists() for path in (root / REQUIREMENTS_FILE, root / LOCK_FILE, galaxy_dir(root))):
        _known(update, set())
        return Outcome()
    # Bad input is refused before anything is created (the lock file included); the files are read again under
    # the lock, where what is decided is what is written.
    written = load_requirements(root)
    reqs = written or Requirements((), ())
    before = read_lock(root)
    _known(update, reqs.names() | {collection_key(c, before) or c.label for c in reqs.collections})
    _refuse_link(root, galaxy_dir(root))  # before the lock file is created in it
    with cancellable(), exclusive_lock(root, on_wait):
        return _locked_sync(root, update)


def _locked_sync(root: Path, update: tuple[str, ...]) -> Outcome:
    written = load_requirements(root)
    reqs = written or Requirements((), ())
    before = read_lock(root)
    known = reqs.names() | {collection_key(c, before) or c.label for c in reqs.collections}
    _known(update, known)
    _refuse_links(root)
    _clear_staging(root)
    work = _Work(root, galaxy_dir(root) / f".staging-{os.getpid()}")
    try:
        work.staging.mkdir(exist_ok=True)
        for role in reqs.roles:
            _role(work, role, before, role.name in update)
        for coll in reqs.collections:
            _collection(work, coll, before, update)
        _apply(work, before, written is not None)
    finally:
        shutil.rmtree(work.staging, ignore_errors=True)
    return work.outcome


def _known(update: tuple[str, ...], known: set[str]) -> None:
    for name in update:
        if name not in known:
            raise ConfigError(f"--update {name}: no role or collection of that name in requirements.yml "
                              f"(it has: {', '.join(sorted(known)) or 'none'})")


def _clear_staging(root: Path) -> None:
    """A killed deps leaves .staging-<pid> behind, request files with unredacted URLs included; every deps stages
    only while it holds the exclusive lock, so under it each one left is a dead run's (a reused pid's too)."""
    for path in galaxy_dir(root).glob(".staging-*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _refuse_links(root: Path) -> None:
    """deps deletes what the lock does not list under .bakery/galaxy: a directory there that is a symlink, or
    resolves outside .bakery, would make it delete someone else's files, so it is refused before anything is
    written."""
    collections = galaxy_collections_dir(root) / "ansible_collections"
    namespaces = sorted(collections.iterdir()) if collections.is_dir() and not collections.is_symlink() else []
    for path in [galaxy_dir(root), galaxy_roles_dir(root), galaxy_collections_dir(root), collections, *namespaces]:
        _refuse_link(root, path)


def _refuse_link(root: Path, path: Path) -> None:
    rel = path.relative_to(root)
    if path.is_symlink():
        raise ConfigError(f"{rel} is a symlink (to {os.readlink(path)}); bake.py deps removes what "
                          "requirements.lock does not list there and follows no symlink: replace it with a "
                          "directory")
    if path.exists() and not path.resolve().is_relative_to((root / ".bakery").resolve()):
        raise ConfigError(f"{rel} resolves outside .bakery (to {path.resolve()}); bake.py deps removes what "
                          "requirements.lock does not list there: make .bakery/galaxy a plain directory")


def _remove(path: Path) -> None:
    """An installed role or collection; a symlink is unlinked, never followed."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


def _role(work: _Work, role: RoleRequirement, before: Lock | None, fresh: bool) -> None:
    entry = before.roles.get(role.name) if before else None
    pinned = entry if (entry is not None and not fresh and role_matches(role, entry)) else None
    final = role_dir(work.root, role.name)
    if pinned is not None and final.is_dir() and installed_digest(final) == pinned["digest"]:
        work.lock.roles[role.name] = pinned
        work.outcome.unchanged.append(role.name)
        return
    commit = None
    request: dict[str, str] = {"name": role.name}
    if role.kind == "git":
        commit = pinned["commit"] if pinned else install.resolve_commit(work.root, role.location, str(role.version),
                                                                         role.name)
        request |= {"src": install.absolute(work.root, role.location), "scm": "git", "version": commit}
    elif role.kind == "galaxy":
        request["src"] = role.src
        wanted = pinned["version"] if pinned else role.version
        if wanted:
            request["version"] = wanted
    else:
        request |= {"src": install.absolute(work.root, role.src)}
    install.galaxy_install(work.root, work.staging, "role", request, work.staging / "roles", role.name)
    staged = work.staging / "roles" / role.name
    if not staged.is_dir():
        raise OperationError(f"installing role '{role.name}' failed: ansible-galaxy installed nothing at "
                             f"{staged.name}")
    digest = _checked(staged, pinned, role.name, role.src)
    version = role.version or install.installed_role_version(staged) or (pinned or {}).get("version")
    locked = {"src": redact(role.src), "scm": role.scm, "version": version, "commit": commit, "digest": digest}
    work.lock.roles[role.name] = {k: v for k, v in locked.items() if v is not None}
    work.moves.append((staged, role_dir(work.root, role.name)))
    work.outcome.installed[role.name] = _short(work.lock.roles[role.name])


def _collection(work: _Work, coll: CollectionRequirement, before: Lock | None, update: tuple[str, ...]) -> None:
    key = collection_key(coll, before)
    entry = before.collections.get(key) if (before and key) else None
    fresh = bool({key, coll.label} & set(update))
    pinned = entry if (entry is not None and not fresh and collection_matches(coll, entry)) else None
    if pinned is not None and key is not None:
        final = collection_dir(work.root, key)
        if final.is_dir() and installed_digest(final) == pinned["digest"]:
            work.lock.collections[key] = pinned
            work.outcome.unchanged.append(key)
            return
    commit = None
    version = pinned["version"] if pinned else coll.version
    if coll.kind == "git":
        commit = pinned["commit"] if pinned else install.resolve_commit(work.root, coll.location, str(coll.version),
                                                                         coll.label)
        version = commit
    request = {"type": coll.kind, "source": install.absolute(work.root, coll.source)}
    if coll.name:
        request["name"] = coll.name
        if coll.kind == "galaxy" and coll.source == coll.name:
            del request["source"]
    if coll.kind in ("galaxy", "git") and version:
        request["version"] = version
    dest = work.staging / f"collections-{len(work.moves)}"
    install.galaxy_install(work.root, work.staging, "collection", request, dest, coll.label)
    found = [c for ns in (dest / "ansible_collections").glob("*") if ns.is_dir() and "." not in ns.name
             for c in ns.iterdir() if c.is_dir()]
    if len(found) != 1:
        raise OperationError(f"installing collection '{coll.label}' failed: ansible-galaxy installed "
                             f"{len(found)} collections, expected one")
    fqcn, installed_version = install.collection_manifest(found[0])
    if coll.name and fqcn != coll.name:
        raise OperationError(f"installing collection '{coll.label}': the source holds {fqcn}, not {coll.name}; "
                             "fix name: in requirements.yml")
    if fqcn in work.lock.collections:
        raise ConfigError(f"requirements.yml: collection {fqcn} is listed twice (once as '{coll.label}'); keep one")
    digest = _checked(found[0], pinned, fqcn, coll.source)
    locked = {"source": redact(coll.source), "type": coll.kind, "version": installed_version,
              "requested": coll.version, "commit": commit, "digest": digest}
    work.lock.collections[fqcn] = {k: v for k, v in locked.items() if v is not None}
    work.moves.append((found[0], collection_dir(work.root, fqcn)))
    work.outcome.installed[fqcn] = _short(work.lock.collections[fqcn])


def _checked(staged: Path, pinned: dict[str, str] | None, name: str, source: str) -> str:
    """A reinstall of the locked version must give the locked content: anything else changed at the source."""
    digest = installed_digest(staged)
    if pinned is not None and digest != pinned["digest"]:
        raise OperationError(f"'{name}' from {redact(source)} at its locked version no longer matches "
                             f"requirements.lock (the source changed); if that is expected run: "
                             f"bake.py deps --update {name}")
    return digest


def _short(entry: dict[str, str]) -> str:
    commit = f"@{entry['commit'][:12]}" if entry.get("commit") else ""
    return f"{entry.get('version', 'unversioned')}{commit}"


def _apply(work: _Work, before: Lock | None, has_requirements: bool) -> None:
    """Rename every staged install into place, write the lock, then remove what the lock no longer lists."""
    for index, (staged, final) in enumerate(work.moves):
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            final.rename(work.staging / f"replaced-{index}")
        staged.rename(final)
    root = work.root
    lock_path = root / LOCK_FILE
    if has_requirements:
        if not lock_path.is_file() or lock_path.read_text(encoding="utf-8") != lock_text(work.lock):  # old fields too
            write_lock(root, work.lock)
            work.outcome.lock_written = True
    elif lock_path.is_file():
        lock_path.unlink()
        work.outcome.lock_written = True
    for name in installed_roles(root):
        if name not in work.lock.roles:
            _remove(role_dir(root, name))
            work.outcome.removed.append(name)
    for name in installed_collections(root):
        if name not in work.lock.collections:
            path = collection_dir(root, name)
            _remove(path)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
            work.outcome.removed.append(name)
    previous = (set(before.roles) | set(before.collections)) if before else set()
    for name in sorted(previous):
        if name not in work.lock.roles and name not in work.lock.collections and name not in work.outcome.removed:
            work.outcome.removed.append(name)
    work.outcome.was_locked = previous & set(work.outcome.removed)
