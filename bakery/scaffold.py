"""`bake.py new-role`: a role in this project's style, with a Molecule scenario that passes as made."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bakery.errors import ConfigError

TEMPLATE = Path(__file__).parent / "templates" / "role"
PLACEHOLDER = "__ROLE__"
# Role names become variable prefixes, so they must be valid Ansible variable names.
NEW_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}\Z")


def new_role(roles_dir: Path, name: str) -> list[Path]:
    """Copy the role template to roles/<name>, substituting the name in paths and contents."""
    if not NEW_ROLE_RE.match(name):
        raise ConfigError(f"role name '{name}' is invalid: "
                          "use lower-case letters, digits and '_', starting with a letter")
    target = roles_dir / name
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another name or remove it first")
    created = []
    tmp = roles_dir / f".{name}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for source in sorted(TEMPLATE.rglob("*")):
            if source.is_dir() or "__pycache__" in source.parts:
                continue
            rel = Path(str(source.relative_to(TEMPLATE)).replace(PLACEHOLDER, name))
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(source.read_text(encoding="utf-8").replace(PLACEHOLDER, name), encoding="utf-8")
            created.append(target / rel)
        tmp.rename(target)  # all or nothing: no half-made role is left behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return created
