"""Role names as users write them, resolved to a directory the way ansible-playbook will find it.

A playbook (or a role's meta/main.yml) may name a project role (`nginx`), an installed Galaxy or git role
(`author.nginx`, or a git role's short name) or a collection role by FQCN (`namespace.collection.role`). The
search order is ansible's with bakery's paths (bakery.deps.paths): the project's roles/ first, so a project role
shadows an installed one of the same name, then .bakery/galaxy/roles; collections in .bakery/galaxy/collections,
then those shipped with the `ansible` package. Resolving here, before any container starts, turns a missing role
into one line saying how to install it instead of an ansible error in the middle of a bake.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bakery.deps.paths import REQUIREMENTS_FILE, collections_path, roles_path
from bakery.errors import ConfigError

_PART = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
PROJECT_ROLE_RE = re.compile(rf"^{_PART}\Z")  # roles/<name> or a git role installed under its short name
GALAXY_ROLE_RE = re.compile(rf"^{_PART}\.{_PART}\Z")  # author.role
FQCN_ROLE_RE = re.compile(rf"^([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\.({_PART})\Z")  # namespace.collection.role
ROLE_NAME_RE = re.compile(rf"^{_PART}(\.{_PART}){{0,2}}\Z")  # any of the three


@dataclass(frozen=True)
class FoundRole:
    name: str  # as the image knows it: a short name found inside a collection becomes its FQCN
    path: Path
    third_party: bool  # installed from requirements (or shipped with ansible), not one of the project's roles


def entry_name(entry: Any, where: str) -> str:
    """The role name of a playbook or meta/main.yml role entry (a name, or a mapping with role: or name:)."""
    named = entry.get("role", entry.get("name")) if isinstance(entry, dict) else entry
    if not isinstance(named, str):
        raise ConfigError(f"{where}: a role entry must be a name or a mapping with 'role:', got {entry!r}")
    if not ROLE_NAME_RE.match(named) or named.count(".") == 2 and not FQCN_ROLE_RE.match(named):
        raise ConfigError(f"{where}: role '{named}' is not a role name: use a role under roles/ (letters, digits, "
                          "'_' and '-'), a Galaxy role 'author.role' or a collection role 'namespace.collection.role'")
    return named


@lru_cache(maxsize=1)
def bundled_collection_roots() -> tuple[Path, ...]:
    """site-packages/ansible_collections of the `ansible` package (found without importing ansible)."""
    spec = importlib.util.find_spec("ansible_collections")
    return tuple(Path(p) for p in (spec.submodule_search_locations or [])) if spec else ()


def collection_roots(root: Path) -> list[Path]:
    """Every ansible_collections/ directory, in search order."""
    return [p / "ansible_collections" for p in collections_path(root)] + list(bundled_collection_roots())


def collection_dir(root: Path, fqcn: str) -> Path | None:
    """Where collection `ns.coll` is installed (the first one found), or None."""
    namespace, _, name = fqcn.partition(".")
    for base in collection_roots(root):
        if (base / namespace / name).is_dir():
            return base / namespace / name
    return None


def collection_of(path: Path) -> str | None:
    """`ns.coll` for a role directory .../ansible_collections/ns/coll/roles/role, else None."""
    parts = path.parts
    if len(parts) >= 5 and parts[-2] == "roles" and parts[-5] == "ansible_collections":
        return f"{parts[-4]}.{parts[-3]}"
    return None


def find_role(root: Path, name: str, within: str | None = None,
              collections: Sequence[str] = ()) -> FoundRole | None:
    """The directory of role `name`, or None.

    A short name is looked up as ansible does: first in `within` (the collection of the role whose dependency
    this is), then in `collections` (the play's `collections:` keyword, or the depending role's meta one),
    then in the roles paths, so a collection named there wins over roles/<name>.
    """
    fqcn = FQCN_ROLE_RE.match(name)
    if fqcn:
        return _collection_role(root, f"{fqcn[1]}.{fqcn[2]}", fqcn[3])
    if "." not in name:
        for collection in dict.fromkeys([within, *collections] if within else collections):
            found = _collection_role(root, collection, name)
            if found:
                return found
    project_roles, *installed = roles_path(root)
    if (project_roles / name).is_dir():
        return FoundRole(name, project_roles / name, third_party=False)
    for base in installed:
        if (base / name).is_dir():
            return FoundRole(name, base / name, third_party=True)
    return None


def _collection_role(root: Path, collection: str, role: str) -> FoundRole | None:
    if collection.count(".") != 1:
        return None
    path = collection_dir(root, collection)
    if path is not None and (path / "roles" / role).is_dir():
        return FoundRole(f"{collection}.{role}", path / "roles" / role, third_party=True)
    return None


def collection_names(value: Any, where: str) -> tuple[str, ...]:
    """A `collections:` keyword (play or role meta): a list of `ns.coll` names (a single name is accepted)."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: 'collections' must be a list of collection names (ns.coll), got {value!r}")
    return tuple(names)


def missing_message(name: str, roles_dir: str) -> str:
    """What to do about a role that is nowhere: a project role is created, a community one installed."""
    if "." in name:
        return f"role '{name}' is not installed; add it to {REQUIREMENTS_FILE} and run: bake.py deps"
    return f"role '{name}' not found in {roles_dir}/; create it with: bake.py new-role {name}"


def meta_file(role: Path) -> Path | None:
    """The role's meta/main.yml (Galaxy roles also use main.yaml), or None."""
    for name in ("main.yml", "main.yaml"):
        if (role / "meta" / name).is_file():
            return role / "meta" / name
    return None


def baked_roles(roles: list[Any]) -> dict[str, Any]:
    """Name -> RoleRef of the given roles and, recursively, of every role they depend on or include."""
    found: dict[str, Any] = {}
    pending = list(roles)
    while pending:
        role = pending.pop(0)
        if role.name not in found:
            found[role.name] = role
            pending.extend((*role.dependencies, *role.includes))
    return found


def baked_names(roles: list[Any]) -> set[str]:
    return set(baked_roles(roles))
