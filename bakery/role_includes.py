"""Roles a role pulls in from its tasks and handlers with include_role / import_role.

Such a role runs in the layer as surely as a meta/main.yml dependency, so it must be in the layer key and in the
AWS bundle. A literal `name:` resolves like a dependency. A templated one (`{{ which }}`) cannot be resolved before
the bake, and a literal one that names no installed role may be guarded by a `when:` that never holds here (a
RedHat-only include in a third-party role, a path like ../helper): the layer then counts every role under roles/
and .bakery/galaxy/roles (coarse, since a change to any of them rebakes the layer, but never wrong; a collection
role named that way is not covered), and the second case is logged as a warning.

Most task files include no role, so only files whose text mentions include_role/import_role are parsed (with
libyaml when it is there), and a file's names are kept while its mtime and size stay the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from bakery.deps.paths import roles_path
from bakery.errors import ConfigError
from bakery.files import read_text
from bakery.role_paths import FoundRole, entry_name, find_role

log = logging.getLogger("bakery.role_includes")

INCLUDE_MODULES = frozenset(f"{prefix}{module}" for prefix in ("", "ansible.builtin.", "ansible.legacy.")
                            for module in ("include_role", "import_role"))
_FREE_FORM_NAME = re.compile(r"(?:^|\s)name=(\S+)")


class TaskLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader (on libyaml when PyYAML has it) that reads ansible's tags (!unsafe, !vault) as the value."""


def _tagged(loader: Any, suffix: str, node: yaml.Node) -> Any:
    del suffix
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


TaskLoader.add_multi_constructor("!", _tagged)


def task_files(role: Path) -> list[Path]:
    """The role's tasks/ and handlers/ YAML files (subdirectories too: include_tasks reaches them)."""
    found: list[Path] = []
    for sub in ("tasks", "handlers"):
        if (role / sub).is_dir():
            found.extend(sorted(p for p in (role / sub).rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file()))
    return found


def role_include_names(role: Path) -> list[tuple[Path, str]]:
    """(file, name) of every include_role/import_role in the role's tasks and handlers, in file order."""
    found: list[tuple[Path, str]] = []
    for path in task_files(role):
        stat = path.stat()
        found.extend((path, name) for name in _file_names(path, stat.st_mtime_ns, stat.st_size))
    return found


@lru_cache(maxsize=4096)
def _file_names(path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The included names of one task file (cached per version of the file: mtime and size are in the key)."""
    del mtime_ns, size
    text = read_text(path)
    if "include_role" not in text and "import_role" not in text:
        return ()
    try:
        tasks = yaml.load(text, Loader=TaskLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: malformed YAML: {problem}; fix the syntax") from exc
    return tuple(included_names(tasks))


def include_target(root: Path, name: str, where: str, within: str | None,
                   searched: tuple[str, ...]) -> FoundRole | None:
    """The role a literal include names, or None (logged) when it is not a role name or not installed."""
    try:
        target = find_role(root, entry_name(name, where), within, searched)
    except ConfigError:
        target = None
    if target is None:
        log.warning("include_role of '%s' in %s: not installed; the layer key counts every role", name, where)
    return target


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
