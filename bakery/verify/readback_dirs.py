"""Where `verify --target aws` reads an AMI's snapshot back, and which of those directories a killed run left.

Apart from bakery.verify.aws_readback so that gc's leftover scan (run by every bake, also a no-change rebake)
does not import the secret scanners with it.
"""

from __future__ import annotations

from pathlib import Path

from bakery.config import Project

READBACK_PREFIX = ".readback-"
KEPT = "kept"  # in a read-back directory kept with --keep-disk: not a leftover, gc leaves it


def readback_dir(project: Project, run_id: str) -> Path:
    return project.state_dir / "disks" / f"{READBACK_PREFIX}{run_id}"


def stale_readbacks(project: Project) -> list[Path]:
    """Read-back directories of runs whose process is gone (killed), not those kept with --keep-disk."""
    from bakery.disks.builder import owner_gone

    return [path for path in sorted((project.state_dir / "disks").glob(f"{READBACK_PREFIX}*"))
            if not (path / KEPT).exists() and owner_gone(path)]
