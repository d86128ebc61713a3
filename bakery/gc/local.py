"""`bake.py gc --keep N` on the local target: gather what the plan needs, then carry it out.

Gathering is three reads whatever the catalog's size: the catalog's ready versions
and releases (one query each) and `podman ps -a` (which images containers use).
Carrying out removes the planned images with `podman rmi` (never --force: an
image a container started to use meanwhile stays), then forgets exactly the
versions whose image is gone, in one catalog transaction. A gc killed between the
two leaves catalog rows whose image is missing; the next gc (or bake) forgets them.

Carrying out runs under every local environment's fleet lock (bakery.gc.locks: the
lock deploy, rollback and promote take), and `podman ps -a` is read once more just
before `podman rmi`: a version a container started to use since the plan stays.

collect_local is the whole command: leftovers of dead bakes always, the plan with --keep, the images no
catalog lists with --orphans (bakery.gc.orphans), carried out unless it is a dry run; its LocalGcReport says
what happened as JSON or lines.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from bakery import podman
from bakery.artifacts import LocalArtifactStore
from bakery.builders.layer_lock import layers_unused
from bakery.catalog import SqliteCatalog
from bakery.config import Project
from bakery.errors import OperationError
from bakery.gc import leftovers, orphans
from bakery.gc.locks import environment_locks
from bakery.gc.plan import ArtifactRow, InUse, LayerRow, LocalPlan, ReleaseRow, VersionRow, plan_local

log = logging.getLogger("bakery.gc")


@dataclass
class GcResult:
    removed: list[dict[str, Any]] = field(default_factory=list)
    # planned, but podman kept the image (a container uses it now)
    failed: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # planned, but a container started to use it before rmi
    layers: list[dict[str, Any]] = field(default_factory=list)  # cached layers removed
    # planned, but kept: a bake of its image runs in this checkout, or a container started to use it
    layers_kept: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LocalGcReport:
    """One `bake.py gc` on the local target: the leftovers found, the plan (with --keep) and what became of it."""

    dry_run: bool
    keep: int | None
    found: leftovers.Leftovers
    planned: LocalPlan | None
    result: GcResult
    orphans: orphans.Orphans | None = None  # only with --orphans

    def to_dict(self) -> dict[str, Any]:
        found, result = self.found, self.result
        return {"dry_run": self.dry_run, "containers": found.containers, "pending_versions": found.pending_versions,
                "playbooks": found.playbooks, "disks": found.disks, "vms": found.vms,
                "processes": found.processes, "keep": self.keep,
                "versions": result.removed, "failed": result.failed,
                "artifacts": result.artifacts, "kept": self.planned.kept if self.planned else [],
                "skipped": result.skipped, "layers": result.layers, "layers_kept": result.layers_kept,
                **({"orphans": self.orphans.to_dict()} if self.orphans else {})}

    def lines(self) -> list[str]:
        """The report for a terminal: what went (or would go), and on a dry run why the rest stays."""
        verb = "would remove" if self.dry_run else "removed"
        found, result = self.found, self.result
        lines = []
        others = self.orphans.lines(self.dry_run) if self.orphans else []
        if found.empty() and not (result.removed or result.failed or result.artifacts or result.layers or others):
            lines.append("nothing to remove")
        for kind, items in (("container", found.containers), ("pending version", found.pending_versions),
                            ("playbook", found.playbooks), ("disk file", found.disks), ("VM", found.vms)):
            lines += [f"{verb} {kind} {item}" for item in items]
        lines += [f"{'would kill' if self.dry_run else 'killed'} process {item}" for item in found.processes]
        lines += [f"{verb} version {e['image']}:{e['version']} ({e['reason']})" for e in result.removed]
        lines += [f"{verb} artifact {e['name']} {e['version']} ({e['reason']})" for e in result.artifacts]
        lines += [f"{verb} cached layer {_layer_name(e)} ({e['reason']})" for e in result.layers]
        lines += [f"kept version {e['image']}:{e['version']} ({e['reason']})" for e in result.skipped]
        lines += [f"kept cached layer {_layer_name(e)} ({e['reason']})" for e in result.layers_kept]
        lines += others
        if self.dry_run and self.planned:
            lines += [f"keep version {e['image']}:{e['version']}: {'; '.join(e['reasons'])}" for e in self.planned.kept]
        return lines

    def raise_for_failures(self) -> None:
        """Versions podman refused to remove make the command fail (after its report), as they stay in the catalog."""
        if self.result.failed:
            names = ", ".join(f"{e['image']}:{e['version']}" for e in self.result.failed)
            raise OperationError(f"podman did not remove {names} (a container may have started to use it); "
                                 "they stay in the catalog")


def _layer_name(entry: dict[str, Any]) -> str:
    return f"{entry['image']}/{entry['role']} {podman.bare_id(entry['image_id'])[:12]}"


def containers_in_use() -> InUse:
    """Image references and ids of every container on the host (running or not), with the containers' names."""
    in_use = InUse()
    for container in json.loads(podman.run("ps", "-a", "--format", "json").stdout or "[]"):
        name = (container.get("Names") or [container.get("Id", "?")[:12]])[0]
        if container.get("Image"):
            in_use.refs.setdefault(container["Image"], []).append(name)
        if container.get("ImageID"):
            in_use.ids.setdefault(podman.bare_id(container["ImageID"]), []).append(name)
    return in_use


def artifact_rows(store: LocalArtifactStore) -> list[ArtifactRow]:
    rows = []
    names = sorted(p.name for p in store.root.iterdir() if p.is_dir()) if store.root.is_dir() else []
    for name in names:
        latest = store.latest(name)
        rows += [ArtifactRow(a.name, a.version, a.sha256, latest is not None and a.sha256 == latest.sha256)
                 for a in store.list(name)]
    return rows


def plan(project: Project, catalog: SqliteCatalog, keep: int) -> LocalPlan:
    """The plan for this project: podman versions only (an AMI version's image_ref is an AMI id: gc --target aws
    owns those)."""
    prefix = podman.IMAGE_REPO + "/"
    versions = [VersionRow(r["image"], r["version"], r["seq"], r["image_ref"], r["image_id"] or "", r["artifacts"],
                           r["created"], frozenset(r["layer_keys"]))
                for r in catalog.gc_versions() if (r["image_ref"] or "").startswith(prefix)]
    releases = [ReleaseRow(**r) for r in catalog.release_refs()]
    store = LocalArtifactStore(project.state_dir / "artifacts")
    layers = [LayerRow(r["layer_key"], r["image"], r["role"], r["image_id"], r["created"]) for r in catalog.layers()]
    return plan_local(versions, releases, containers_in_use(), keep, artifact_rows(store), layers)


def _present_refs() -> set[str]:
    images = json.loads(podman.run("images", "--format", "json").stdout or "[]")
    return {name for image in images for name in image.get("Names") or []}


def apply(project: Project, catalog: SqliteCatalog, planned: LocalPlan) -> GcResult:
    """Remove the planned images, forget the versions whose image is gone (one transaction), delete stale artifacts."""
    result = GcResult()
    in_use = containers_in_use()
    going = []
    for entry in planned.delete:
        users = in_use.refs.get(entry["image_ref"], [])
        if users:
            result.skipped.append({**entry, "reason": f"container {', '.join(users)} started to use it"})
        else:
            going.append(entry)
    refs = [entry["image_ref"] for entry in going]
    podman.remove_images(refs)
    present = _present_refs() if refs else set()
    for entry in going:
        (result.failed if entry["image_ref"] in present else result.removed).append(entry)
    catalog.discard_versions([(e["image"], e["version"]) for e in result.removed])
    for entry in result.failed:
        log.warning("kept %s:%s: podman did not remove %s (a container may use it now)",
                    entry["image"], entry["version"], entry["image_ref"])
    directory = project.state_dir / "artifacts"
    for artifact in planned.artifacts:
        base = directory / artifact["name"] / artifact["sha256"]
        # The manifest first: a manifest must never name a missing archive.
        for suffix in (".json", ".tar.gz.sha256", ".tar.gz"):
            try:
                os.unlink(f"{base}{suffix}")
            except FileNotFoundError:
                pass
        result.artifacts.append(artifact)
    _remove_layers(project, catalog, planned.layers, result)
    return result


def _remove_layers(project: Project, catalog: SqliteCatalog, planned: list[dict[str, Any]], result: GcResult) -> None:
    """After the versions (their images are the children of the last layer): `podman rmi` by image id, newest
    first, never --force; forget exactly the layers whose image is gone.

    By id, not by the cache tag: another checkout baking the same key moves the tag to its own image. podman
    removes an image record even when other images are built on it (they keep the storage layers they share), and
    refuses one a container uses: such a layer stays, in podman and in the catalog. An image a bake of this
    checkout is baking keeps all its layers (bakery.builders.layer_lock): the bake may have chosen them already.
    """
    by_image: dict[str, list[dict[str, Any]]] = {}
    for entry in planned:
        by_image.setdefault(entry["image"], []).append(entry)
    tried = []
    for image, entries in by_image.items():
        with layers_unused(project.state_dir, image) as free:
            if not free:
                result.layers_kept += [{**entry, "reason": f"a bake of {image} is running in this checkout"}
                                       for entry in entries]
                continue
            tried += entries
    present = podman.remove_images_by_id([entry["image_id"] for entry in tried])
    for entry in tried:
        if podman.bare_id(entry["image_id"]) in present:
            result.layers_kept.append({**entry, "reason": "podman kept it: a container started to use it"})
        else:
            result.layers.append(entry)
    catalog.forget_layers([(entry["key"], entry["image_id"]) for entry in result.layers])


def collect_local(project: Project, catalog: SqliteCatalog, keep: int | None, dry_run: bool,
                  with_orphans: bool = False) -> LocalGcReport:
    """Find the leftovers of dead bakes and, with `keep`, plan which old versions go, `with_orphans` the images no
    catalog on the host lists; unless `dry_run`, remove them.

    Removing runs under every local environment's fleet lock (a dry run changes nothing, so it takes none).
    The caller has checked that podman works (podman.check_working).
    """
    with nullcontext() if dry_run or not keep else environment_locks(project, catalog, "local"):
        found = leftovers.find(project, catalog)
        planned = plan(project, catalog, keep) if keep else None
        result = GcResult(removed=list(planned.delete), artifacts=list(planned.artifacts),
                          layers=list(planned.layers)) if planned else GcResult()
        if not dry_run:
            leftovers.remove(found, catalog, project.state_dir / "runs")
            if planned:
                result = apply(project, catalog, planned)
    gone = orphans.find(keep_ids=orphans.listed_ids(project.state_dir) or set()) if with_orphans else None
    if gone is not None and not dry_run:
        gone = orphans.remove(gone)
    return LocalGcReport(dry_run, keep, found, planned, result, gone)
