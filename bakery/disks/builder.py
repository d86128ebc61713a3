"""Make (or find) a version's bootable disk: check the tools, build in a work directory, publish atomically.

Disks live in .bakery/disks/<image>/<version>.<format>. A build works in .bakery/disks/.work-<run id>/ with its
pid in a file there; a work directory whose process is gone is a leftover of a killed build and is removed by
the next build and by gc. The catalog row is written only after the finished file is renamed into place.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.catalog import SqliteCatalog
from bakery.config import Project
from bakery.disks import assemble
from bakery.disks.layout import Layout
from bakery.errors import ConfigError
from bakery.processes import pid_alive
from bakery.progress import Progress
from bakery.runs import Run

# command -> the Debian package that provides it (make setup installs them all)
TOOLS = {"mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "dumpe2fs": "e2fsprogs", "mkfs.vfat": "dosfstools",
         "mcopy": "mtools", "systemd-repart": "systemd", "fallocate": "util-linux", "tar": "tar"}
FORMATS = ("raw", "qcow2")


@dataclass
class DiskResult:
    image: str
    version: str
    format: str
    path: Path
    sha256: str
    bytes: int
    allocated: int
    cached: bool
    seconds: float
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "version": self.version, "format": self.format, "path": str(self.path),
                "sha256": self.sha256, "bytes": self.bytes, "allocated": self.allocated, "cached": self.cached,
                "seconds": round(self.seconds, 1), **self.details}


def require_tools(disk_format: str) -> None:
    """Every command the build runs, or exit 2 naming the package that provides the first missing one."""
    needed = dict(TOOLS, **({"qemu-img": "qemu-utils"} if disk_format == "qcow2" else {}))
    for command, package in needed.items():
        if shutil.which(command) is None:
            raise ConfigError(f"{command} is not installed (Debian package {package}): run make setup")


def disks_dir(project: Project) -> Path:
    return project.state_dir / "disks"


def remove_stale_work(project: Project) -> list[Path]:
    """Work directories of builds whose process is gone (killed): removed, returned."""
    removed = stale_work(project)
    for work in removed:
        shutil.rmtree(work, ignore_errors=True)
    return removed


def cached(project: Project, catalog: SqliteCatalog, image: str, version: str, disk_format: str) -> DiskResult | None:
    """The recorded disk when its file is still there with the recorded size."""
    row = catalog.disk(image, version, disk_format)
    if row is None:
        return None
    path = project.state_dir / row["path"]
    if not path.is_file() or path.stat().st_size != row["bytes"]:
        return None
    return DiskResult(image, version, disk_format, path, row["sha256"], row["bytes"], assemble.allocated_bytes(path),
                      True, 0.0, row["details"])


def make_disk(project: Project, catalog: SqliteCatalog, progress: Progress, record: dict[str, Any], layout: Layout,
              disk_format: str = "raw", size: int = 0) -> DiskResult:
    """The version's disk in `disk_format`, built unless already recorded (the raw disk is built first)."""
    image, version = record["image"], record["version"]
    found = cached(project, catalog, image, version, disk_format)
    # the disk's size is the raw disk's (a qcow2 file is smaller than the disk it holds)
    if found is not None and (not size or size == found.details.get("disk_bytes", found.bytes)):
        return found
    require_tools(disk_format)
    started = time.monotonic()
    # the raw disk first, before this build's work directory exists: its build removes stale work directories,
    # and one carrying this process's pid counts as stale (a pid reused after a kill -9)
    raw = make_disk(project, catalog, progress, record, layout, "raw", size) if disk_format == "qcow2" else None
    remove_stale_work(project)
    run = Run.start(project.state_dir, "disk")
    work = disks_dir(project) / f".work-{run.id}"
    work.mkdir(parents=True)
    (work / "pid").write_text(str(os.getpid()), encoding="utf-8")
    try:
        if raw is None:
            return _build(project, catalog, progress, record, layout, size, run, work, started)
        progress.note(f"disk: converting {image}:{version} to qcow2")
        assemble.to_qcow2(raw.path, work / "disk.qcow2")
        return _publish(project, catalog, image, version, "qcow2", work / "disk.qcow2", run, started, raw.details)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(project: Project, catalog: SqliteCatalog, progress: Progress, record: dict[str, Any], layout: Layout,
           size: int, run: Run, work: Path, started: float) -> DiskResult:
    provenance = record.get("provenance") or {}
    plan = assemble.DiskPlan(record["image"], record["version"], record["image_ref"],
                             record.get("input_digest") or provenance.get("input_digest") or "",
                             provenance.get("build_time") or record["created"], layout,
                             _layer_under_last_role(catalog, record))
    progress.note(f"disk: building the disk of {plan.image}:{plan.version}")
    disk, details = assemble.build_raw(plan, work, size)
    return _publish(project, catalog, plan.image, plan.version, "raw", disk, run, started, details)


def _layer_under_last_role(catalog: SqliteCatalog, record: dict[str, Any]) -> str:
    """The cached layer image the version's last role was baked on ('' when the catalog or podman lacks it)."""
    from bakery import podman

    layers = record.get("layers") or []
    if len(layers) < 2:
        return ""
    cached = catalog.layer(layers[-2].get("layer_key") or layers[-2].get("key") or "")
    ref = str(cached and (cached.get("image_id") or cached.get("ref")) or "")
    return ref if ref and podman.image_exists(ref) else ""


def _publish(project: Project, catalog: SqliteCatalog, image: str, version: str, disk_format: str, built: Path,
             run: Run, started: float, details: dict[str, Any]) -> DiskResult:
    digest = assemble.sha256_file(built)
    target = disks_dir(project) / image / f"{version}.{disk_format}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, target)
    size, allocated = target.stat().st_size, assemble.allocated_bytes(target)
    catalog.record_disk(image, version, disk_format=disk_format, path=str(target.relative_to(project.state_dir)),
                        sha256=digest, size=size, allocated=allocated, run_id=run.id, details=details)
    result = DiskResult(image, version, disk_format, target, digest, size, allocated, False,
                        time.monotonic() - started, details)
    run.write_result(result.to_dict())
    return result


def orphan_disks(project: Project, catalog: SqliteCatalog) -> list[Path]:
    """Disk files the catalog does not list: their version was removed, or a build was killed after the rename.
    None while a build runs (it renames its disk into place before it records it); work directories are not
    disks (glob's * matches the dot-names of .work-*)."""
    if any(work not in stale_work(project) for work in disks_dir(project).glob(".work-*")):
        return []
    recorded = {project.state_dir / row["path"] for row in catalog.disks()}
    return sorted(path for pattern in ("*/*.raw", "*/*.qcow2") for path in disks_dir(project).glob(pattern)
                  if not path.parent.name.startswith(".") and path not in recorded)


def stale_work(project: Project) -> list[Path]:
    """Work directories of killed builds (their pid is gone), without removing them."""
    return [work for work in sorted(disks_dir(project).glob(".work-*")) if owner_gone(work)]


def owner_gone(directory: Path) -> bool:
    """A run directory whose `pid` file names no live process other than this one (or names none): a leftover."""
    try:
        pid = int((directory / "pid").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pid = 0
    return not (pid and pid_alive(pid) and pid != os.getpid())
