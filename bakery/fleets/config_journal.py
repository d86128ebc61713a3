"""A runtime-config change in flight, so that runtime.yml and the fleet never disagree for long.

`config set` writes .bakery/envs/<env>/config-change.json (atomically) before it writes runtime.yml: the old
file's exact bytes and mode, the sha256 of the bytes it writes, the writer's pid and, once recorded, the release
that rolls the change out. The writer removes it when the release succeeded, and restores the old bytes when the
change did not roll out. When the writer died (kill -9, power loss) the journal stays, and the next command on the
environment settles it while holding the environment's lock (so never under a live writer), by the release's
outcome, because the file must say what the fleet runs:

- the release succeeded: the new config runs; the file is kept (a refresh a dead process left is finished by the
  next command, bakery.fleets.rollout.recover, and may well succeed);
- the release's refresh is saved for resumption (refresh.json names it): undecided; recover finishes or rolls it
  back first, and settles the journal right after;
- anything else (no release yet, abandoned, failed, rolled back): the old bytes go back.

A restore puts the old bytes back only while runtime.yml holds exactly the bytes config set wrote: an edit made
since (by hand, while the rollout ran or after the process died) is kept, and said so. The file is always the
environment's runtime.yml, never a path the journal names, and a journal that is not what config set writes is
one line (exit 2) saying how to get out, never a guess.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery.errors import ConfigError
from bakery.files import write_atomically
from bakery.fleets.runtime_config import runtime_path
from bakery.fleets.state import EnvironmentState, environment_folder

if TYPE_CHECKING:
    from bakery.catalog import Catalog
    from bakery.config import Project
    from bakery.environments import Environment

JOURNAL = "config-change.json"
DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def journal_path(state_dir: Path, env_name: str) -> Path:
    return environment_folder(state_dir, env_name) / JOURNAL


def find_release(catalog: Catalog, env: str, release_id: int) -> dict[str, Any] | None:
    """One of the environment's releases by id (here, not in rollout, which imports this module)."""
    return next((r for r in catalog.releases(env, limit=1000) if r["id"] == release_id), None)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _optional_int(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _problem(data: Any) -> str | None:
    """What makes a journal's content unusable (None when config set could have written it)."""
    if not isinstance(data, dict):
        return "not a JSON object"
    old = data.get("old")
    if old is not None:
        try:
            base64.b64decode(old, validate=True)
        except (TypeError, ValueError, binascii.Error):
            return "field 'old' is not base64 text"
    mode = data.get("mode")
    if not _optional_int(mode) or (mode is not None and not 0 <= mode <= 0o7777):
        return "field 'mode' is not a file mode"
    if not isinstance(data.get("new_sha256"), str) or not DIGEST_RE.fullmatch(data["new_sha256"]):
        return "field 'new_sha256' is not a sha256 digest"
    for field in ("pid", "release_id"):
        if not _optional_int(data.get(field)):
            return f"field '{field}' is not a number"
    return None


class ConfigChange:
    """The journal of one environment's config change (bytes of the old runtime.yml, digest of the new one,
    writer, release)."""

    def __init__(self, state_dir: Path, env: Environment):
        self.env_name = env.name
        self.file = runtime_path(env)  # from the environment: a journal never chooses the file it restores
        self.path = journal_path(state_dir, env.name)

    def begin(self, old: bytes | None, new: bytes, run_id: str | None = None) -> None:
        """Record the change before runtime.yml is written: whatever happens next, the old bytes can come back."""
        mode = stat.S_IMODE(self.file.stat().st_mode) if old is not None else None
        self._save({"old": None if old is None else base64.b64encode(old).decode("ascii"), "mode": mode,
                    "new_sha256": _digest(new), "pid": os.getpid(), "run_id": run_id, "release_id": None})

    def record_release(self, release_id: int, run_id: str) -> None:
        data = self.read()
        if data is not None:
            self._save({**data, "release_id": release_id, "run_id": run_id})

    def read(self) -> dict[str, Any] | None:
        """The journal, checked field by field (None when there is none)."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unusable(f"cannot read it: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._unusable("not JSON") from exc
        problem = _problem(data)
        if problem:
            raise self._unusable(problem)
        return data

    def _unusable(self, what: str) -> ConfigError:
        return ConfigError(f"{self.path}: not a config-change journal bakery can use ({what}); check that "
                           f"{self.file} holds the config you want (./bake.py status --env {self.env_name} shows "
                           f"what runs), then remove {self.path}")

    def keep(self) -> None:
        """The change rolled out (or the environment is down and takes it at the next deploy): forget the old bytes."""
        self.path.unlink(missing_ok=True)

    def restore(self) -> str | None:
        """Put the old runtime.yml back, byte for byte (or remove a file that did not exist), when it still holds
        exactly the bytes config set wrote, then forget the change. Returns "restored", "kept" (edited since: left
        alone), "unchanged" (the new bytes never reached it), or None without a journal."""
        data = self.read()
        if data is None:
            return None
        old = None if data["old"] is None else base64.b64decode(data["old"], validate=True)
        try:
            now: bytes | None = self.file.read_bytes()
        except FileNotFoundError:
            now = None
        if now == old:
            outcome = "unchanged"
        elif now is not None and _digest(now) == data["new_sha256"]:
            if old is None:
                self.file.unlink()
            else:
                write_atomically(self.file, old, mode=data["mode"] if data["mode"] is not None else 0o644)
            outcome = "restored"
        else:
            outcome = "kept"
        self.path.unlink(missing_ok=True)
        return outcome

    def _save(self, data: dict[str, Any]) -> None:
        write_atomically(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def restore_note(env_name: str, file: Path, outcome: str | None, why: str) -> str | None:
    """One line saying what restore() did with the file, `why` being how the change ended without rolling out."""
    if outcome == "restored":
        return f"{env_name}: restored {file} to what it was: {why}; set it again with ./bake.py config set"
    if outcome == "kept":
        return (f"{env_name}: kept {file} as it is: it was changed by hand since config set wrote it, and {why}; "
                "check the file, then roll it out with ./bake.py config set or ./bake.py deploy")
    if outcome == "unchanged":
        return f"{env_name}: {file} was never changed: {why}"
    return None


def settle_locked(state_dir: Path, catalog: Catalog, env: Environment) -> str | None:
    """Settle a journal a dead writer left (hold the environment's lock); one line saying what was done, or None."""
    change = ConfigChange(state_dir, env)
    data = change.read()
    if data is None:
        return None
    release_id = data["release_id"]
    release = find_release(catalog, env.name, release_id) if release_id is not None else None
    who = f"the config set of pid {data['pid']}" + (f" (release #{release_id})" if release_id else "")
    if release is not None and release["status"] == "succeeded":
        change.keep()
        return f"{env.name}: {who} rolled out before its process ended; its runtime.yml stays"
    saved = EnvironmentState(environment_folder(state_dir, env.name), env.name).read_refresh()
    if release is not None and release["status"] == "in_progress" and saved \
            and saved.get("release_id") == release_id:
        return None  # its refresh is resumed by recover(), which settles the journal once the release is closed
    why = f"{who} ended before its change rolled out ({release['status'] if release else 'no release recorded'})"
    return restore_note(env.name, change.file, change.restore(), why)


def settle_pending(project: Project, catalog: Catalog, env: Environment) -> str | None:
    """Before a command reads an environment: settle a config change whose writer is gone. A live writer holds the
    environment's lock, and its change is left to it."""
    if not journal_path(project.state_dir, env.name).is_file():
        return None
    state = EnvironmentState(environment_folder(project.state_dir, env.name), env.name)
    with state.try_lock() as free:
        if not free:
            return None
        return settle_locked(project.state_dir, catalog, env)
