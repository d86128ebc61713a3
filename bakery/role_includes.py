"""Roles a role pulls in from its tasks and handlers with include_role / import_role.

Such a role runs in the layer as surely as a meta/main.yml dependency, so it must be in the layer key and in the
AWS bundle. A literal `name:` resolves like a dependency. A templated one (`{{ which }}`) cannot be resolved before
the bake: the layer then counts every role under roles/ and .bakery/galaxy/roles (coarse, since a change to any of
them rebakes the layer, but never wrong; a collection role named by a template is not covered).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bakery.deps.paths import roles_path

INCLUDE_MODULES = frozenset(f"{prefix}{module}" for prefix in ("", "ansible.builtin.", "ansible.legacy.")
                            for module in ("include_role", "import_role"))
_FREE_FORM_NAME = re.compile(r"(?:^|\s)name=(\S+)")


class TaskLoader(yaml.SafeLoader):
    """A safe loader that reads ansible's own tags (!unsafe, !vault) as the plain value they tag."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    del suffix
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


TaskLoader.add_multi_constructor("!", _tagged)


def task_files(role: Path) -> list[Path]:
    """The role's tasks/ and handlers/ YAML files (subdirectories too: include_tasks reaches them)."""
    found: list[Path] = []
    for sub in ("tasks", "handlers"):
        if (role / sub).is_dir():
            found.extend(sorted(p for p in (role / sub).rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file()))
    return found


def included_names(tasks: Any) -> Iterator[str]:
    """The role name of every include_role/import_role task of a task list, inside block/rescue/always too."""
    if not isinstance(tasks, list):
        return
    for task in tasks:
        if not isinstance(task, dict):
            continue
        for key in ("block", "rescue", "always"):
            yield from included_names(task.get(key))
        for module in sorted(INCLUDE_MODULES & set(task)):
            name = _name(task[module])
            if name:
                yield name


def _name(args: Any) -> str | None:
    if isinstance(args, dict):
        name = args.get("name")
        return name if isinstance(name, str) else None
    if isinstance(args, str):
        found = _FREE_FORM_NAME.search(args)
        return found[1] if found else None
    return None


def templated(name: str) -> bool:
    return "{{" in name or "{%" in name


def every_role(root: Path) -> tuple[tuple[str, Path], ...]:
    """(roles/<name> or .bakery/galaxy/roles/<name>, directory) of every role a templated include may name."""
    found: list[tuple[str, Path]] = []
    for base in roles_path(root):
        if base.is_dir():
            found.extend((f"{base.relative_to(root).as_posix()}/{p.name}", p)
                         for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith("."))
    return tuple(found)
