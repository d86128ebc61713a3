"""Which collections a layer can use, so that a collection's locked digest enters exactly those layers' keys.

A role uses a collection when it is one of the collection's roles (its modules and plugins run with it, also under
short names), or when it names the collection: an FQCN module or filter (`acme.tools.thing:`), a `collections:`
list, an include_role/import_role of an FQCN role. Finding the name anywhere in the role's text files (or its
dependencies', or the play around it) is coarser than ansible's own lookup but never misses one: a false match only
costs a rebake, a missed one would reuse a layer baked with the old collection. Three more ways in:
- group_vars/ and host_vars/ beside the playbook and the play's vars_files apply to every layer of the play;
- a used collection uses what its own files name (meta/runtime.yml redirects, MANIFEST.json dependencies, plugins);
- ansible-core routes short names (`ufw:`) to collections (ansible_builtin_runtime.yml), from whichever one is
  first on the collections path: a locked collection that is such a target may be used by any role, so by all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from bakery import role_paths
from bakery.config import Layer, RoleRef
from bakery.provenance import digest_dirs
from bakery.role_paths import collection_dir, collection_of

_COLLECTION_RE = re.compile(r"^([A-Za-z0-9_]+\.[A-Za-z0-9_]+)\.")


def _roles(role: RoleRef) -> Iterator[RoleRef]:
    """The role and every role it depends on or includes from its tasks, each directory once (diamonds)."""
    seen: set[Path] = set()
    pending = [role]
    while pending:
        ref = pending.pop()
        if ref.path not in seen:
            seen.add(ref.path)
            yield ref
            pending.extend(reversed((*ref.dependencies, *ref.includes)))


def _role_texts(role: RoleRef) -> Iterator[str]:
    """Text of the role and its dependencies and includes (every role, when an include name is templated)."""
    for ref in _roles(role):
        yield from _texts(ref.path)
        for _, path in ref.any_role:
            yield from _texts(path)


def _texts(root: Path) -> Iterator[str]:
    """The text files under root (what tree_digest covers; binary files cannot name a collection)."""
    if root.is_file():
        yield from _read_text(root)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = digest_dirs(root, dirpath, dirnames)
        for name in sorted(filenames):
            yield from _read_text(Path(dirpath) / name)


def _read_text(path: Path) -> Iterator[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return
    if b"\0" not in data:
        yield data.decode("utf-8", errors="replace")


def _pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    names = sorted(names, key=len, reverse=True)
    if not names:
        return None
    # Not inside a longer dotted name, except a Python import: ansible_collections.acme.tools.plugins...
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(r"(?:(?<![\w.])|(?<=ansible_collections\.))(" + alternatives + r")(?!\w)")


def _mentions(pattern: re.Pattern[str] | None, texts: Iterable[str]) -> set[str]:
    return {name for text in texts for name in pattern.findall(text)} if pattern else set()


def vars_files(play_header: dict[str, Any], playbook_dir: Path) -> Iterator[tuple[str, Path]]:
    """(entry as written, path) of each of the play's vars_files (a list entry is a list of alternatives)."""
    names = play_header.get("vars_files") or []
    for name in [names] if isinstance(names, str) else names:
        for candidate in name if isinstance(name, list) else [name]:
            path = Path(str(candidate))
            yield str(candidate), path if path.is_absolute() else playbook_dir / path


@lru_cache(maxsize=1)
def routed_collections() -> frozenset[str]:
    """`ns.coll` of every redirect target in ansible-core's plugin routing (found without importing ansible)."""
    spec = importlib.util.find_spec("ansible")
    if spec is None or not spec.origin:
        return frozenset()
    path = Path(spec.origin).parent / "config" / "ansible_builtin_runtime.yml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        routing = (yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}).get("plugin_routing") or {}
    except (OSError, yaml.YAMLError):
        return frozenset()
    targets = set()
    for plugins in routing.values():
        for entry in (plugins or {}).values():
            found = _COLLECTION_RE.match(str((entry or {}).get("redirect") or ""))
            if found:
                targets.add(found[1])
    return frozenset(targets - {"ansible.builtin", "ansible.legacy"})


def _collection_mentions(path: Path, digest: str, names: tuple[str, ...]) -> frozenset[str]:
    """The locked collections a collection's own files name; cached when its locked digest pins the content."""
    if digest:
        return _cached_mentions(path, digest, names)
    return frozenset(_mentions(_pattern(names), _texts(path)))


@lru_cache(maxsize=256)
def _cached_mentions(path: Path, digest: str, names: tuple[str, ...]) -> frozenset[str]:
    del digest  # part of the cache key only
    return frozenset(_mentions(_pattern(names), _texts(path)))


def _closure(used: set[str], locked: Mapping[str, str], root: Path) -> set[str]:
    """`used` plus every locked collection a used one names, transitively."""
    names = tuple(sorted(locked))
    pending, done = sorted(used), set(used)
    while pending:
        name = pending.pop()
        path = collection_dir(root, name) if name in locked else None
        if path is None:
            continue
        for found in sorted(_collection_mentions(path, locked[name], names) - done):
            done.add(found)
            pending.append(found)
    return done


def _play_texts(layer: Layer) -> Iterator[str]:
    """group_vars/ and host_vars/ beside the playbook and the play's vars_files: they apply to every role."""
    if layer.playbook is None:
        return
    playbook_dir = layer.playbook.parent
    for name in ("group_vars", "host_vars"):
        if (playbook_dir / name).is_dir():
            yield from _texts(playbook_dir / name)
    for _, path in vars_files(layer.play_header, playbook_dir):
        if path.is_file():
            yield from _texts(path)


def used_collections(layer: Layer, candidates: Iterable[str] | Mapping[str, str]) -> set[str]:
    """The collections of the layer's collection roles (wherever installed), plus those of `candidates` (the
    locked ones; a mapping gives their digests) that the layer's roles, its play, the bake vars, a used collection
    or ansible-core's short-name routing can reach."""
    locked = dict(candidates) if isinstance(candidates, Mapping) else dict.fromkeys(candidates, "")
    used = {c for role in _roles(layer.role) if (c := collection_of(role.path))}
    texts = _layer_texts(layer)
    used |= _mentions(_pattern(set(locked) - used), texts) | (routed_collections() & set(locked))
    if layer.playbook is None:  # no project root to find installed collections in
        return used
    return _closure(used, locked, layer.playbook.parent.parent)


def _layer_texts(layer: Layer) -> list[str]:
    return [json.dumps([layer.play_header, layer.role.entry], default=str), *_play_texts(layer),
            *_role_texts(layer.role)]


def bundled_versions() -> dict[str, str]:
    """{ns.coll: version from its MANIFEST.json} of the collections shipped with the `ansible` package."""
    found: dict[str, str] = {}
    for base in role_paths.bundled_collection_roots():
        for manifest in sorted(base.glob("*/*/MANIFEST.json")):
            name = f"{manifest.parent.parent.name}.{manifest.parent.name}"
            try:
                info = json.loads(manifest.read_text(encoding="utf-8")).get("collection_info") or {}
            except (OSError, ValueError, AttributeError):
                info = {}
            found.setdefault(name, str(info.get("version") or "unknown"))
    return found


def layer_bundled(layer: Layer, bundled: Mapping[str, str], locked: Mapping[str, str]) -> dict[str, str]:
    """{ns.coll: version} of the shipped collections the lock does not pin that the layer uses: one of its roles
    is in it, or the layer's text names it as for locked ones (short-name routing is not followed: it would put
    every routed collection into every key)."""
    shipped = {name: version for name, version in bundled.items() if name not in locked}
    if not shipped:
        return {}
    used = {c for role in _roles(layer.role) if (c := collection_of(role.path))}
    used |= _mentions(_pattern(set(shipped) - used), _layer_texts(layer))
    return {name: shipped[name] for name in sorted(used) if name in shipped}


def layer_collections(layer: Layer, locked: dict[str, str]) -> dict[str, str]:
    """{ns.coll: locked digest} of every locked collection the layer can use."""
    if not locked:
        return {}
    return {name: locked[name] for name in sorted(used_collections(layer, locked)) if name in locked}
