"""Readiness: can the app do its job right now?

Cheap enough to run on every /health call (a few stat/access calls and one
small read), so a data directory that disappears or turns read-only shows up
at the next load-balancer check, not at the next restart.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from webapp.config import Config
from webapp.release import read_release


def _writable_dir(path: Path, what: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{what} {path} does not exist"
    except OSError as exc:
        return f"{what} {path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{what} {path} is not a directory"
    # access() also reports a read-only file system (EROFS), even for root.
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{what} {path} is not writable"
    return None


def unready_reason(config: Config) -> str | None:
    """Why the app cannot serve, or None when every dependency is ready."""
    reason = _writable_dir(config.data_dir, "data directory")
    if reason:
        return reason
    items = config.data_dir / "items"
    if os.path.lexists(items):
        reason = _writable_dir(items, "items directory")
        if reason:
            return reason
    try:
        read_release(config.release_file)
    except FileNotFoundError:
        # Absent until the bake's final layer writes it: while a role is baked or tested the
        # service must still start (Type=notify would time out). /version then shows nulls.
        pass
    except OSError as exc:
        return f"release file {config.release_file} is unreadable: {exc.strerror or exc}"
    return None
