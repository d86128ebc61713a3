"""Which collections a layer can use, so that a collection's locked digest enters exactly those layers' keys.

A role uses a collection when it is one of the collection's roles (its modules and plugins run with it, also under
short names), or when it names the collection: an FQCN module or filter (`acme.tools.thing:`), a `collections:`
list, an include_role/import_role of an FQCN role. Finding the name anywhere in the role's text files (or its
dependencies', or the play around it) is coarser than ansible's own lookup but never misses one: a false match only
costs a rebake, a missed one would reuse a layer baked with the old collection.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from bakery.config import Layer, RoleRef
from bakery.provenance import DIGEST_EXCLUDES
from bakery.role_paths import collection_of


def _roles(role: RoleRef) -> Iterator[RoleRef]:
    yield role
    for dep in role.dependencies:
        yield from _roles(dep)


def _texts(root: Path) -> Iterator[str]:
    """The role's text files (what tree_digest covers; binary files cannot name a collection)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in DIGEST_EXCLUDES)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if b"\0" not in data:
                yield data.decode("utf-8", errors="replace")


def _pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    names = sorted(names, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in names) + r")(?!\w)")


def used_collections(layer: Layer, candidates: Iterable[str]) -> set[str]:
    """The collections of the layer's collection roles (wherever installed), plus those of `candidates` (the
    locked ones) that the layer's roles or play name."""
    used = {c for role in _roles(layer.role) if (c := collection_of(role.path))}
    pattern = _pattern(set(candidates) - used)
    if pattern is None:
        return used
    texts = [json.dumps([layer.play_header, layer.role.entry], default=str)]
    for role in _roles(layer.role):
        texts.extend(_texts(role.path))
    for text in texts:
        used.update(pattern.findall(text))
    return used


def layer_collections(layer: Layer, locked: dict[str, str]) -> dict[str, str]:
    """{ns.coll: locked digest} of every locked collection the layer can use."""
    return {name: locked[name] for name in sorted(used_collections(layer, locked)) if name in locked}
