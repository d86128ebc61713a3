"""Where a project's requirements live: one place, used by every bake, verify and Molecule run.

The project's own roles/ always come first; installed requirements come after them, so a project
role of the same name wins, exactly as in ANSIBLE_ROLES_PATH order.
"""

from __future__ import annotations

from pathlib import Path

REQUIREMENTS_FILE = "requirements.yml"
LOCK_FILE = "requirements.lock"


def galaxy_dir(root: Path) -> Path:
    return root / ".bakery" / "galaxy"


def galaxy_roles_dir(root: Path) -> Path:
    """Installed roles: .bakery/galaxy/roles/<name>/."""
    return galaxy_dir(root) / "roles"


def galaxy_collections_dir(root: Path) -> Path:
    """Installed collections: .bakery/galaxy/collections/ansible_collections/<namespace>/<name>/."""
    return galaxy_dir(root) / "collections"


def roles_path(root: Path) -> list[Path]:
    """ANSIBLE_ROLES_PATH for this project, in search order."""
    return [root / "roles", galaxy_roles_dir(root)]


def collections_path(root: Path) -> list[Path]:
    """ANSIBLE_COLLECTIONS_PATH for this project; the collections shipped with the `ansible` package are found
    after these through Python's path (ansible-core's COLLECTIONS_SCAN_SYS_PATH)."""
    return [galaxy_collections_dir(root)]
