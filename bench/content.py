"""Does a speed-up change what ends up in the image? Compare two images' file trees and look for left-over caches."""

from __future__ import annotations

import os
import subprocess

from common import run

# Things no baked image may carry (bake.py's hygiene and the roles' cleanup remove them).
LEFTOVERS = ("root/.ansible", "root/.cache", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages")


def file_tree(ref: str) -> set[str]:
    """Every path in the image (mounted read-only by podman, no container started)."""
    mount = run(["podman", "image", "mount", ref]).stdout.strip()
    try:
        found = set()
        for folder, dirs, files in os.walk(mount):
            rel = os.path.relpath(folder, mount)
            for name in dirs + files:
                found.add(os.path.normpath(os.path.join(rel, name)))
        return found
    finally:
        subprocess.run(["podman", "image", "unmount", ref], capture_output=True, check=False)


def compare(ref: str, other: str) -> tuple[int, list[str], list[str]]:
    """(paths in both, paths only in ref, paths only in other), ignoring what differs between any two bakes (logs,
    caches of ids)."""
    def keep(path: str) -> bool:
        return not path.startswith(("var/log/", "var/lib/systemd/", "var/cache/debconf/", "var/lib/dpkg/triggers/"))

    a, b = {p for p in file_tree(ref) if keep(p)}, {p for p in file_tree(other) if keep(p)}
    return len(a & b), sorted(a - b), sorted(b - a)


def leftovers(ref: str) -> list[str]:
    import fnmatch

    return sorted(p for p in file_tree(ref) if any(fnmatch.fnmatch(p, pattern) for pattern in LEFTOVERS))
