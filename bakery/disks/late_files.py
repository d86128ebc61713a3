"""The files the image's last layers wrote go into an ext4 filesystem after all the others.

`mkfs.ext4 -d` hands out inodes and blocks in the order it walks the tree (by name), so a file of the app that
grows by one block would move every inode and block after it, and a publish of the next version would upload
most of the disk again. Instead the late files are set aside before mkfs and added afterwards with debugfs
(mkdir, write, symlink, mknod, ln, then owner, mode, time, link count and xattrs): they take the inodes and
blocks after everything else, and a change among them stays among them. The order is the sorted walk, so the
same tree still gives the same bytes. A name debugfs cannot take safely (a quote, a control character, a
leading dash) sets nothing aside: the filesystem is then made in one pass, correct but less stable.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SetAside:
    """Entries moved out of the tree (relative path -> where they wait) and what debugfs must do to add them."""

    tree: Path
    holding: Path
    moved: dict[str, Path] = field(default_factory=dict)
    parent_times: dict[str, tuple[int, int]] = field(default_factory=dict)

    def commands(self) -> list[str]:
        linked = _linked_in_tree(self.tree)
        commands: list[str] = []
        for relative, held in sorted(self.moved.items()):
            for path, name in _walk(held, relative):
                commands += _add(path, name, linked, self.holding)
        for relative, (_, mtime) in sorted(self.parent_times.items()):
            commands.append(f"sif {_quote('/' + relative)} mtime @{mtime // 1_000_000_000}")
        return commands

    def put_back(self) -> None:
        for relative, held in sorted(self.moved.items()):
            os.rename(held, self.tree / relative)
        for relative, times in self.parent_times.items():
            os.utime(self.tree / relative, ns=times, follow_symlinks=False)
        shutil.rmtree(self.holding, ignore_errors=True)


def _safe(name: str) -> bool:
    return bool(name) and not name.startswith("-") and '"' not in name and all(c.isprintable() for c in name)


def _quote(path: str) -> str:
    return f'"{path}"'


def choose(tree: Path, late: Collection[str]) -> list[str]:
    """The topmost late entries to set aside: a late file, or a late directory whose every entry is late (a
    directory the last layers only touched stays, with its other entries)."""
    wanted = {p.strip("/") for p in late if p.strip("/")}
    chosen: list[str] = []
    for relative in sorted(wanted):
        if any(relative.startswith(c + "/") for c in chosen) or not os.path.lexists(tree / relative):
            continue
        path = tree / relative
        if path.is_dir() and not path.is_symlink():
            inside = [os.path.relpath(os.path.join(d, n), tree) for d, dn, fn in os.walk(path) for n in (*dn, *fn)]
            if any(p not in wanted for p in inside):
                continue
        chosen.append(relative)
    return chosen


def set_aside(tree: Path, late: Collection[str], holding: Path) -> SetAside | None:
    """Move the late entries out of `tree` into `holding` (the parents' times kept); None if nothing moves."""
    chosen = choose(tree, late)
    names = [n for relative in chosen for d, dn, fn in os.walk(tree / relative) for n in (*dn, *fn)]
    if not chosen or not all(_safe(n) for relative in chosen for n in (*relative.split("/"), *names)):
        return None
    aside = SetAside(tree, holding)
    holding.mkdir()
    for relative in chosen:
        parent = os.path.dirname(relative)
        if parent not in aside.parent_times:
            st = os.lstat(tree / parent) if parent else os.lstat(tree)
            aside.parent_times[parent] = (st.st_atime_ns, st.st_mtime_ns)
    for index, relative in enumerate(chosen):
        held = holding / f"{index:06d}"
        os.rename(tree / relative, held)
        aside.moved[relative] = held
    for relative, times in aside.parent_times.items():
        os.utime(tree / relative, ns=times, follow_symlinks=False)
    return aside


def _walk(held: Path, relative: str) -> list[tuple[Path, str]]:
    """(host path, path in the filesystem) for the entry and, for a directory, everything under it, sorted."""
    found = [(held, relative)]
    if held.is_dir() and not held.is_symlink():
        for name in sorted(os.listdir(held)):
            found += _walk(held / name, f"{relative}/{name}")
    return found


def _linked_in_tree(tree: Path) -> dict[tuple[int, int], str]:
    """Files with more than one name that stay in the tree: a late name of one of them becomes a link to it."""
    linked: dict[tuple[int, int], str] = {}
    for dirpath, _, filenames in os.walk(tree):
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                linked.setdefault((st.st_dev, st.st_ino), "/" + os.path.relpath(os.path.join(dirpath, name), tree))
    return linked


def _add(path: Path, relative: str, linked: dict[tuple[int, int], str], holding: Path) -> list[str]:
    st = os.lstat(path)
    parent, name = os.path.dirname(relative), os.path.basename(relative)
    commands = [f"cd {_quote('/' + parent)}"]
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode) and key in linked:
        return [*commands, f"ln {_quote(linked[key])} {_quote(name)}"]
    if stat.S_ISDIR(st.st_mode):
        commands.append(f"mkdir {_quote(name)}")
    elif stat.S_ISREG(st.st_mode):
        commands.append(f"write {_quote(str(path))} {_quote(name)}")
        if st.st_nlink > 1:
            linked[key] = "/" + relative
    elif stat.S_ISLNK(st.st_mode):
        commands.append(f"symlink {_quote(name)} {_quote(os.readlink(path))}")
    else:
        kind = "p" if stat.S_ISFIFO(st.st_mode) else "c" if stat.S_ISCHR(st.st_mode) else "b"
        device = f" {os.major(st.st_rdev)} {os.minor(st.st_rdev)}" if kind != "p" else ""
        commands.append(f"mknod {_quote(name)} {kind}{device}")
    target = _quote(name)
    commands += [f"sif {target} mode 0{st.st_mode:o}", f"sif {target} uid {st.st_uid}",
                 f"sif {target} gid {st.st_gid}", f"sif {target} mtime @{int(st.st_mtime)}"]
    if stat.S_ISREG(st.st_mode):
        commands.append(f"sif {target} links_count {st.st_nlink}")
    for attribute in sorted(os.listxattr(path, follow_symlinks=False)):
        value = holding / f"xattr-{sum(1 for _ in holding.glob('xattr-*'))}"
        value.write_bytes(os.getxattr(path, attribute, follow_symlinks=False))
        commands.append(f"ea_set -f {_quote(str(value))} {target} {_quote(attribute)}")
    return commands
