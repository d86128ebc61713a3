"""Leftovers of bakes that died without cleaning up (SIGKILL, power loss).

Build containers, pending catalog rows, generated layer playbooks, disk work
directories and verify VMs all carry the pid of the bake that made them; once
that process is gone they are garbage. Disk files no version lists go too, and
the ansible-playbook processes (with mitogen's multiplexer) still running a dead
bake's generated playbook: they run in a session of their own, so a kill -9 of
bake.py leaves them, and a hung one would wait forever.
The next bake and `bake.py gc` remove them. A build container kept with
--keep-on-failure is renamed <name>-kept and stays until its user removes it: a
bake in another checkout must not take it away from under their shell.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bakery import podman
from bakery.builders.apt_mounts import stale_mounts
from bakery.catalog import Catalog, SqliteCatalog
from bakery.config import Project
from bakery.disks import builder as disk_builder
from bakery.disks import vm_leftovers
from bakery.gc import dead_runs
from bakery.processes import pid_alive
from bakery.verify.readback_dirs import stale_readbacks

log = logging.getLogger("bakery.leftovers")

BUILD_LABEL = "io.bakery.build"
PID_LABEL = "io.bakery.build.pid"
KEPT_SUFFIX = "-kept"  # a build container kept for inspection (--keep-on-failure), never a leftover


@dataclass
class Leftovers:
    containers: list[str] = field(default_factory=list)
    pending_versions: list[str] = field(default_factory=list)
    playbooks: list[str] = field(default_factory=list)
    disks: list[str] = field(default_factory=list)  # disk files no version lists, work directories of killed builds
    vms: list[str] = field(default_factory=list)  # VMs of a verify --vm that was killed (filled in by remove)
    processes: list[str] = field(default_factory=list)  # runs of dead bakes found; after remove, what was killed
    process_ids: list[tuple[int, str]] = field(default_factory=list, repr=False)  # (pid, playbook) found

    def empty(self) -> bool:
        return not (self.containers or self.pending_versions or self.playbooks or self.disks or self.vms
                    or self.processes)


def find(project: Project, catalog: Catalog) -> Leftovers:
    found = Leftovers()
    for container in podman.containers_with_label(f"{BUILD_LABEL}=1"):
        name = (container.get("Names") or [container["Id"]])[0]
        if name.endswith(KEPT_SUFFIX):
            continue
        labels = container.get("Labels") or {}
        try:
            pid = int(labels.get(PID_LABEL, "0"))
        except ValueError:
            pid = 0
        if not pid_alive(pid):
            found.containers.append(name)
    for row in catalog.versions(status="pending"):
        if not pid_alive(row["pid"]):
            found.pending_versions.append(f"{row['image']}:{row['version']}")
    if project.playbooks_dir.is_dir():
        for path in project.playbooks_dir.iterdir():
            match = dead_runs.GENERATED_PLAYBOOK.match(path.name)
            if match and not pid_alive(int(match.group(1))):
                found.playbooks.append(str(path))
    found.process_ids = dead_runs.find()
    found.processes = [f"pid {pid}: ansible-playbook {playbook}" for pid, playbook in found.process_ids]
    orphans = disk_builder.orphan_disks(project, catalog) if isinstance(catalog, SqliteCatalog) else []
    found.disks = [str(p) for p in (*disk_builder.stale_work(project), *stale_readbacks(project),
                                    *orphans, *stale_mounts(project.state_dir / "runs"))]
    return found


def remove(found: Leftovers, catalog: Catalog, runs_root: Path | None = None) -> None:
    found.processes = dead_runs.stop(found.process_ids)  # first: nothing may still run in a removed container
    if runs_root is not None:
        vms = vm_leftovers.clean(runs_root)
        found.vms = [f"qemu pid {pid}" for pid in vms.killed]
    for leftover in map(Path, found.disks):
        log.info("removing leftover disk file %s", leftover)
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    for name in found.containers:
        log.info("removing leftover build container %s", name)
        podman.remove_container(name)
    for ref in found.pending_versions:
        image, _, version = ref.partition(":")
        log.info("removing unfinished version %s", ref)
        row = catalog.version(image, version)
        if row:  # its image only: the name may since be another checkout's
            podman.remove_image_of_run(podman.image_ref(image, version), row["run_id"])
        catalog.discard_version(image, version)
    for path in found.playbooks:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def clean(project: Project, catalog: Catalog) -> Leftovers:
    found = find(project, catalog)
    remove(found, catalog, project.state_dir / "runs")
    return found
