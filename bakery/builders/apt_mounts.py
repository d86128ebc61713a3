"""Fresh apt package lists for every layer of a local bake, and none committed into any layer.

Roles that install packages delete the lists in their own layer (this repository's handlers run
`find /var/lib/apt/lists /var/cache/apt -type f ! -name lock -delete`), so a later role, typically a
community role that installs without refreshing the lists as on any normal Debian server, finds no package.
The build container therefore gets per-bake host directories mounted over the lists and the package cache:
`podman commit` never includes bind-mounted content, so what apt downloads stays on the host and goes away
with the bake. The lists are fetched once after boot; a host-side copy (hard links: apt replaces list files
by rename, never in place), kept current after each layer, puts them back before any layer that starts with
them emptied.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from bakery import podman
from bakery.errors import OperationError
from bakery.processes import pid_alive

log = logging.getLogger("bakery.build")

LISTS = "/var/lib/apt/lists"
ARCHIVES = "/var/cache/apt/archives"
UPDATE_TIMEOUT = 600
# The bake's pid: a killed bake's directories (about 80 MB of lists) are removed by bakery.gc.leftovers.
OWNER_FILE = "owner.pid"
# apt's own bookkeeping inside the mounted directories: never copied, never a sign the lists are there.
NOT_LISTS = ("lock", "partial", "auxfiles")
# apt rebuilds its binary caches from the lists whenever they are missing; outside the mounts, so removed
# before each commit like any other scratch file.
# What decides which lists `apt-get update` fetches (sources, apt settings, architectures): a role that changes it
# without refreshing leaves lists that a build container booted from its layer (which fetches them) would not have.
SOURCES_DIGEST = ("{ cat /etc/apt/sources.list /etc/apt/sources.list.d/* /etc/apt/apt.conf.d/* 2>/dev/null; "
                  "dpkg --print-foreign-architectures; } | sha256sum")
SOURCES_FILE = "sources.sha256"
CLEAN_BEFORE_COMMIT = "rm -f /var/cache/apt/pkgcache.bin /var/cache/apt/srcpkgcache.bin"


class AptMounts:
    """The per-bake apt directories under the run directory (<run>/apt/): lists, archives and the lists' copy."""

    def __init__(self, root: Path):
        self.root = root
        self.lists = root / "lists"
        self.archives = root / "archives"
        self.copy = root / "lists-copy"

    def volumes(self) -> list[str]:
        """Create the directories; the `podman run` arguments that mount them."""
        for path in (self.lists, self.archives, self.copy):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        (self.root / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="utf-8")
        return ["--volume", f"{self.lists}:{LISTS}", "--volume", f"{self.archives}:{ARCHIVES}"]

    def refresh(self, container: str) -> tuple[float, str | None]:
        """`apt-get update` in the booted build container, then keep the copy; the seconds it took, and which
        local source could not be read.

        Only a base's local sources (copy:/PATH or file:/PATH from base.extra_sources: directories on the host,
        never visible in a build container) may fail, as a warning: a role that needs one fails with apt's own
        message. Anything else (a mirror, the security archive, a signature, podman itself) stops the bake: an
        image must never be baked from lists that silently miss the security updates.
        """
        started = time.monotonic()
        proc = podman.run("exec", container, "apt-get", "update", "-q", check=False, timeout=UPDATE_TIMEOUT)
        problem = None
        if proc.returncode != 0:
            lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            failed = [line.split()[1] for line in lines if line.startswith("Err:") and len(line.split()) > 1]
            errors = [line for line in lines if line.startswith("E:")]
            reason = (errors or [line for line in lines if line.startswith("Err:")] or lines
                      or [f"exit code {proc.returncode}"])[0]
            if not failed or not all(_local(uri) for uri in failed) or not all(
                    _local_error(line) for line in errors):
                raise OperationError(f"apt-get update in build container {container} failed: {reason} "
                                     "(the bake fetches fresh package lists from the base's apt sources; "
                                     "check the network and /etc/apt/sources.list.d of the base)")
            problem = (f"apt-get update in build container {container} could not read the base's local source "
                       f"{', '.join(sorted(set(failed)))} (a host directory); a role that installs from it will fail")
            log.warning("%s", problem)
        self.keep()
        (self.root / SOURCES_FILE).write_text(self._sources(container), encoding="utf-8")
        return time.monotonic() - started, problem

    def refresh_if_sources_changed(self, container: str) -> bool:
        """After a layer: fetch the lists again when the layer changed the apt sources (a role that adds a
        repository without `update_cache`), so the next role finds what it would after a boot from the layer."""
        try:
            before = (self.root / SOURCES_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            before = ""
        if self._sources(container) == before:
            return False
        self.refresh(container)
        log.info("the apt sources changed in the last layer: package lists fetched again")
        return True

    @staticmethod
    def _sources(container: str) -> str:
        return podman.run("exec", container, "sh", "-c", SOURCES_DIGEST).stdout.strip()

    def keep(self) -> None:
        """Add the lists as they are now to the copy (a role may have added an apt source and refreshed them:
        a later role may install from it)."""
        for name in _list_files(self.lists):  # nothing dropped: apt ignores the lists of a source it no longer has
            _link(self.lists / name, self.copy / name)

    def restore_if_emptied(self) -> bool:
        """Put the copied lists back when a previous role deleted them (no package index left); False when
        the lists are there."""
        present = set(_list_files(self.lists))
        if any("_Packages" in name for name in present) or not _list_files(self.copy):
            return False
        for name in set(_list_files(self.copy)) - present:
            _link(self.copy / name, self.lists / name)
        log.info("restored the apt package lists a previous role removed")
        return True

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _local(uri: str) -> bool:
    return uri.startswith(("copy:", "file:"))


def _local_error(line: str) -> bool:
    """An `E:` line about a local source, or apt's summary that some indexes failed."""
    return "copy:" in line or "file:" in line or line.startswith("E: Some index files failed to download")


def stale_mounts(runs_root: Path) -> list[Path]:
    """The apt directories of bakes that died without removing them (SIGKILL, power loss)."""
    stale = []
    for owner in runs_root.glob(f"*/apt/{OWNER_FILE}"):
        try:
            pid = int(owner.read_text(encoding="utf-8").strip() or "0")
        except (OSError, ValueError):
            pid = 0
        if not pid_alive(pid):
            stale.append(owner.parent)
    return stale


def _list_files(directory: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory) if e.is_file() and e.name not in NOT_LISTS)
    except FileNotFoundError:
        return []


def _link(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
