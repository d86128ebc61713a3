"""A runtime-config change in flight, so that runtime.yml and the fleet never disagree for long.

`config set` writes .bakery/envs/<env>/config-change.json (atomically) before it writes runtime.yml: the old
file's exact bytes and mode, the writer's pid and, once recorded, the release that rolls the change out. The
writer removes it when the release succeeded, and restores the old bytes when the change did not roll out. When
the writer died (kill -9, power loss) the journal stays, and the next command on the environment settles it while
holding the environment's lock (so never under a live writer), by the release's outcome, because the file must
say what the fleet runs:

- the release succeeded: the new config runs; the file is kept (a refresh a dead process left is finished by the
  next command, bakery.fleets.rollout.recover, and may well succeed);
- the release's refresh is saved for resumption (refresh.json names it): undecided; recover finishes or rolls it
  back first, and settles the journal right after;
- anything else (no release yet, abandoned, failed, rolled back): the old bytes go back.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery.errors import OperationError
from bakery.files import write_atomically
from bakery.fleets.state import EnvironmentState, environment_folder

if TYPE_CHECKING:
    from bakery.catalog import Catalog
    from bakery.config import Project
    from bakery.environments import Environment

JOURNAL = "config-change.json"


def journal_path(state_dir: Path, env_name: str) -> Path:
    return environment_folder(state_dir, env_name) / JOURNAL


class ConfigChange:
    """The journal of one environment's config change (bytes of the old runtime.yml, writer, release)."""

    def __init__(self, state_dir: Path, env_name: str):
        self.env_name = env_name
        self.path = journal_path(state_dir, env_name)

    def begin(self, file: Path, old: bytes | None, new: bytes, run_id: str | None = None) -> None:
        """Record the change before runtime.yml is written: whatever happens next, the old bytes can come back."""
        mode = stat.S_IMODE(file.stat().st_mode) if old is not None else None
        self._save({"file": str(file), "old": None if old is None else base64.b64encode(old).decode("ascii"),
                    "mode": mode, "new_size": len(new), "pid": os.getpid(), "run_id": run_id, "release_id": None})

    def record_release(self, release_id: int, run_id: str) -> None:
        data = self.read()
        if data is not None:
            self._save({**data, "release_id": release_id, "run_id": run_id})

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OperationError(f"{self.path}: unreadable config-change journal ({exc}); compare "
                                 f"{self.env_name}'s runtime.yml with what runs (./bake.py status --env "
                                 f"{self.env_name}), then remove the journal") from exc
        return data if isinstance(data, dict) else None

    def keep(self) -> None:
        """The change rolled out (or the environment is down and takes it at the next deploy): forget the old bytes."""
        self.path.unlink(missing_ok=True)

    def restore(self) -> Path | None:
        """Put the old runtime.yml back, byte for byte (or remove a file that did not exist), then forget the change."""
        data = self.read()
        if data is None:
            return None
        file = Path(data["file"])
        if data.get("old") is None:
            file.unlink(missing_ok=True)
        else:
            write_atomically(file, base64.b64decode(data["old"]), mode=data.get("mode") or 0o644)
        self.path.unlink(missing_ok=True)
        return file

    def _save(self, data: dict[str, Any]) -> None:
        write_atomically(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def settle_locked(state_dir: Path, catalog: Catalog, env_name: str) -> str | None:
    """Settle a journal a dead writer left (hold the environment's lock); one line saying what was done, or None."""
    change = ConfigChange(state_dir, env_name)
    data = change.read()
    if data is None:
        return None
    release_id = data.get("release_id")
    release = next((r for r in catalog.releases(env_name, limit=1000) if r["id"] == release_id), None) \
        if release_id is not None else None
    who = f"the config set of pid {data.get('pid')}" + (f" (release #{release_id})" if release_id else "")
    if release is not None and release["status"] == "succeeded":
        change.keep()
        return f"{env_name}: {who} rolled out before its process ended; its runtime.yml stays"
    saved = EnvironmentState(environment_folder(state_dir, env_name), env_name).read_refresh()
    if release is not None and release["status"] == "in_progress" and saved \
            and saved.get("release_id") == release_id:
        return None  # its refresh is resumed by recover(), which settles the journal once the release is closed
    file = change.restore()
    return (f"{env_name}: restored {file} to what it was before {who}, which ended before its change rolled out "
            f"({release['status'] if release else 'no release recorded'}); set it again with ./bake.py config set")


def settle_pending(project: Project, catalog: Catalog, env: Environment) -> str | None:
    """Before a command reads an environment: settle a config change whose writer is gone. A live writer holds the
    environment's lock, and its change is left to it."""
    if not journal_path(project.state_dir, env.name).is_file():
        return None
    state = EnvironmentState(environment_folder(project.state_dir, env.name), env.name)
    with state.try_lock() as free:
        if not free:
            return None
        return settle_locked(project.state_dir, catalog, env.name)
