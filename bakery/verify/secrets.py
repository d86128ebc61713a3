"""Secret scan of an image: every layer the bake committed, every file in it, read whole.

An immutable image is copied to every server and every region; anything secret baked into it leaks
everywhere, and a file one role wrote and a later one deleted is still in the lower layer (and in any
disk or AMI made from the image). So the scan reads each layer's tar stream as `podman save` writes it:
member names exactly as stored (a newline in a name is just a character), path rules on every member,
content rules on every regular file, archives opened within bounds. Findings name the path, the rule,
the line where there is one and the layer; never the secret. An allow-list (`verify-allowlist.yml`, a
reason for every entry) takes care of false positives.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from bakery.errors import OperationError
from bakery.verify.secret_allowlist import RULE_NAMES, AllowEntry, is_allowed, load_allowlist
from bakery.verify.secret_archives import RulesFailed, Walker, member_path
from bakery.verify.secret_findings import Collector, Finding, printable
from bakery.verify.secret_paths import DIR, FILE, OTHER, SYMLINK
from bakery.verify.secret_streams import DECODE_ERRORS

__all__ = ["RULE_NAMES", "AllowEntry", "Finding", "is_allowed", "load_allowlist", "printable", "scan_layer",
           "scan_tree"]


def scan_layer(stream: IO[bytes], layer: str, allowlist: list[AllowEntry],
               names: Callable[[str, bool], None] | None = None) -> list[Finding]:
    """One image layer as a tar stream (plain or compressed, read in order, never seeked); findings carry `layer`.

    `names` sees every member's name (and whether it is a directory): other checks of the layers ride along
    on this one read of each layer instead of a second `podman save`.
    """

    def walk(walker: Walker) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|*", encoding="utf-8", errors="surrogateescape") as tar:
                for member in tar:
                    if names is not None:
                        names(member.name, member.isdir())
                    walker.tar_member(tar, member, "", 0)
        except DECODE_ERRORS as exc:
            raise OperationError(f"secret scan: layer {layer}: its tar stream cannot be read "
                                 f"({type(exc).__name__}); the layer was not scanned") from exc

    return _scan(Collector(layer, allowlist), walk, f"layer {layer}: ", "layer")


def scan_tree(root: Path, allowlist: list[AllowEntry]) -> list[Finding]:
    """The same rules over a directory tree (an unpacked image or a mounted disk), symlinks not followed."""
    return _scan(Collector("", allowlist), lambda walker: _walk_tree(root, walker), "", "tree")


def _scan(collector: Collector, walk: Callable[[Walker], None], where: str, what: str) -> list[Finding]:
    """One walk with its collector: a rule that fails on a file stops the scan (fail closed), naming the file."""
    walker = Walker(collector)
    try:
        walk(walker)
    except RulesFailed as exc:
        raise OperationError(f"secret scan: {where}{printable(exc.path)}: a rule failed on this file ({exc.error}); "
                             f"the {what} was not fully scanned") from exc
    finally:
        walker.close()
    return collector.result()


def _walk_tree(root: Path, walker: Walker) -> None:
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(directory, name)
            local = member_path(full.relative_to(root).as_posix())
            info = full.lstat()
            if stat.S_ISREG(info.st_mode):
                try:
                    handle = full.open("rb")
                except OSError as exc:
                    raise OperationError(f"secret scan: {printable(local)} cannot be read ({exc.strerror}); "
                                         "the tree was not fully scanned") from exc
                with handle:
                    walker.entry(local, "", FILE, info.st_size, handle, 0)
            else:
                mode = info.st_mode
                kind = DIR if stat.S_ISDIR(mode) else SYMLINK if stat.S_ISLNK(mode) else OTHER
                if kind == SYMLINK:
                    walker.value(local, "link target", os.readlink(full))
                walker.entry(local, "", kind, 0, None, 0)
