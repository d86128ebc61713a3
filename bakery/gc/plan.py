"""What `bake.py gc --keep N` removes on the local target, decided without touching podman.

The plan is a pure function of catalog rows and the sets of images in use, so it
can be tested without podman and stays fast for large catalogs (one pass over the
rows, no call per version). The rules, per image:

- the newest N ready versions stay;
- a version an environment runs now (its newest successful rollout) stays, and so
  does that environment's rollback target (the previous distinct version among
  its successful rollouts), and both ends of a release still in progress;
- a version a container uses (running or stopped) stays;
- every other ready version goes.

An artifact goes when no version that stays baked it in and it is not the newest
of its name (the next bake would use it).

A cached role layer goes when no version that stays is built on it, it is older
than the newest version of its image (a newer one is the work of a bake since,
running or failed, which the next bake reuses) and no container started from it.
Without this, every role change left its layers (and the storage under them) for
good: `--keep` removed the versions but not the cache under them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bakery.catalog import ROLLOUT_KINDS


@dataclass(frozen=True)
class VersionRow:
    """One ready version as the catalog holds it."""

    image: str
    version: str
    seq: int
    image_ref: str
    image_id: str = ""
    # artifact name -> artifact version
    artifacts: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    created: str = ""
    # the cache keys of the role layers it is built on
    layers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LayerRow:
    """One cached role layer as the catalog holds it."""

    key: str
    image: str
    role: str
    image_id: str
    created: str


@dataclass(frozen=True)
class ReleaseRow:
    id: int
    env: str
    image: str
    version: str
    previous_version: str | None
    kind: str
    status: str


@dataclass(frozen=True)
class ArtifactRow:
    name: str
    version: str
    sha256: str
    latest: bool


@dataclass
class InUse:
    """What containers use: image references and image ids, each with the containers' names (for the reasons)."""

    refs: dict[str, list[str]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)

    def users(self, row: VersionRow) -> list[str]:
        names = list(self.refs.get(row.image_ref, []))
        if row.image_id:
            names += [n for n in self.ids.get(_bare_id(row.image_id), []) if n not in names]
        return names


@dataclass
class LocalPlan:
    keep: int
    delete: list[dict[str, Any]] = field(default_factory=list)  # {image, version, image_ref, reason}
    kept: list[dict[str, Any]] = field(default_factory=list)  # {image, version, image_ref, reasons: [...]}
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # {name, version, sha256, reason}
    layers: list[dict[str, Any]] = field(default_factory=list)  # {image, role, key, image_id, reason}, newest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bare_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")


def release_protection(releases: Iterable[ReleaseRow]) -> dict[tuple[str, str], list[str]]:
    """(image, version) -> why releases protect it: what each environment runs, its rollback target, refreshes in
    flight."""
    reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
    # (env, image) -> distinct versions of successful rollouts, newest first
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in sorted(releases, key=lambda r: r.id, reverse=True):
        if r.status == "in_progress":
            reasons[(r.image, r.version)].append(f"release #{r.id} to {r.env} is in progress")
            if r.previous_version:
                reasons[(r.image, r.previous_version)].append(f"release #{r.id} to {r.env} may roll back to it")
            continue
        if r.status != "succeeded" or r.kind not in ROLLOUT_KINDS:
            continue
        versions = seen[(r.env, r.image)]
        if len(versions) < 2 and r.version not in versions:
            versions.append(r.version)
            why = (f"{r.env} runs it (release #{r.id})" if len(versions) == 1
                   else f"rollback target of {r.env} (release #{r.id})")
            reasons[(r.image, r.version)].append(why)
    return reasons


def plan_local(versions: Iterable[VersionRow], releases: Iterable[ReleaseRow], in_use: InUse, keep: int,
               artifacts: Iterable[ArtifactRow] = (), layers: Iterable[LayerRow] = ()) -> LocalPlan:
    """Decide which versions, artifacts and cached layers go; every version that stays says why."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    plan = LocalPlan(keep=keep)
    protected = release_protection(releases)
    by_image: dict[str, list[VersionRow]] = defaultdict(list)
    for row in versions:
        by_image[row.image].append(row)
    staying: list[VersionRow] = []
    for image in sorted(by_image):
        for rank, row in enumerate(sorted(by_image[image], key=lambda r: r.seq, reverse=True)):
            reasons = list(protected.get((image, row.version), []))
            if rank < keep:
                reasons.insert(0, f"one of the newest {keep}")
            reasons += [f"container {name} uses it" for name in in_use.users(row)]
            entry = {"image": image, "version": row.version, "image_ref": row.image_ref}
            if reasons:
                plan.kept.append({**entry, "reasons": reasons})
                staying.append(row)
            else:
                plan.delete.append({**entry, "reason": f"older than the newest {keep} and not in use"})
    baked = {(name, version) for row in staying for name, version in row.artifacts.items()}
    for artifact in artifacts:
        if not artifact.latest and (artifact.name, artifact.version) not in baked:
            plan.artifacts.append({"name": artifact.name, "version": artifact.version, "sha256": artifact.sha256,
                                   "reason": "no version that stays bakes it in and a newer one exists"})
    plan.layers = _layers_to_remove(layers, by_image, staying, in_use)
    return plan


def _layers_to_remove(layers: Iterable[LayerRow], by_image: dict[str, list[VersionRow]], staying: list[VersionRow],
                      in_use: InUse) -> list[dict[str, Any]]:
    """Cached layers no staying version is built on, older than their image's newest version, unused; newest first
    (a layer above another is its child: podman removes the child first)."""
    built_on = {key for row in staying for key in row.layers}
    newest = {image: max(row.created for row in rows) for image, rows in by_image.items()}
    going = []
    for layer in sorted(layers, key=lambda layer: layer.created, reverse=True):
        if (layer.key in built_on or not layer.image_id or layer.image not in newest
                or layer.created >= newest[layer.image] or in_use.ids.get(_bare_id(layer.image_id))):
            continue
        going.append({"image": layer.image, "role": layer.role, "key": layer.key, "image_id": layer.image_id,
                      "reason": "no version that stays is built on it and a newer version exists"})
    return going
