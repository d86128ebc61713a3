"""Verify check: no apt package list and no downloaded package in any layer the bake committed.

A bake mounts its own directories over /var/lib/apt/lists and /var/cache/apt/archives, so nothing apt fetched
should ever be committed; this proves it from the layers themselves (as the secret scan reads them: a file a
later role deleted is still in its layer, and in every disk and AMI made from the image). Lists go stale and
weigh 80 MB; packages are the machine's cache, not the image's content. apt's lock files, the empty partial/
directories and whiteouts (deletions) are not leftovers.
"""

from __future__ import annotations

import tarfile
import time
from typing import IO, Any

from bakery.catalog import Catalog
from bakery.errors import OperationError
from bakery.verify import image_layers
from bakery.verify.junit import Check

CHECK = "apt-leftovers"
LISTS = "var/lib/apt/lists/"
ARCHIVES = "var/cache/apt/archives/"
# apt's binary caches, rebuilt from the lists: the same stale data
BINARY_CACHES = ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin")
# apt's own directories, which `podman diff` lists without saying they are directories
APT_DIRS = tuple(f"{root}{name}" for root in (LISTS, ARCHIVES) for name in ("partial", "auxfiles"))


def leftover(name: str, is_dir: bool) -> bool:
    """Whether a layer member is an apt list, a downloaded package or a binary cache."""
    path = name.removeprefix("./").lstrip("/")
    base = path.rsplit("/", 1)[-1]
    if is_dir or base == "lock" or base.startswith(".wh.") or path in APT_DIRS:
        return False
    return path.startswith((LISTS, ARCHIVES)) or path in BINARY_CACHES


def scan_layer(stream: IO[bytes]) -> list[str]:
    """The leftovers in one layer's tar stream (read in order, never seeked)."""
    try:
        with tarfile.open(fileobj=stream, mode="r|*", encoding="utf-8", errors="surrogateescape") as tar:
            return [member.name for member in tar if leftover(member.name, member.isdir())]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise OperationError(f"its tar stream cannot be read ({type(error).__name__})") from error


def check(catalog: Catalog, record: dict[str, Any], base_ref: str | None) -> Check:
    """Every layer above the base, read through one `podman save`; the check names the layers and files.

    verify itself collects the names while the secret scan reads the same streams (`secrets.scan_layer`'s
    `names`), and reports them with `outcome`: no second `podman save`.
    """
    started = time.monotonic()
    if base_ref is None:
        return Check(CHECK, False, 0, "the image's base is gone from podman; cannot tell what the bake added")
    try:
        layers = image_layers.layers_above(catalog, record, base_ref)
        found = by_streams(record["image_ref"], layers)
    except OperationError as error:
        return Check(CHECK, False, time.monotonic() - started, f"could not read the layers: {error}")
    return outcome(found, len(layers), time.monotonic() - started)


def outcome(found: dict[str, list[str]], layers: int, seconds: float) -> Check:
    """The check for what was found, per layer label."""
    if not found:
        return Check(CHECK, True, seconds, output=f"no apt lists or packages in the {layers} layers above the base")
    named = [f"{label}: {', '.join(names[:5])}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")
             for label, names in found.items()]
    return Check(CHECK, False, seconds, "apt lists or packages committed in layer " + "; ".join(named),
                 "\n".join(f"{label}\t{name}" for label, names in found.items() for name in names))


def by_streams(ref: str, layers: list[image_layers.Layer]) -> dict[str, list[str]]:
    """Each layer's tar stream, read through one `podman save` of the image."""
    found: dict[str, list[str]] = {}
    for layer, stream in image_layers.each_layer(ref, layers):
        try:
            names = scan_layer(stream)
        except OperationError as error:
            raise OperationError(f"layer {layer.label}: {error}") from error
        if names:
            found[layer.label] = names
    return found
