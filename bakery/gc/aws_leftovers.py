"""AMIs a dead Packer bake registered but never tagged: found by name, claimed, then removed by gc --target aws.

Packer 1.6.6 tags an AMI only in its last step (CreateImage carries no tags;
bakery.builders.packer_bake), so a bake killed before that (SIGKILL, a lost CI
runner) leaves an AMI and snapshots with no tag at all, which gc's tag filter
never sees. What such an AMI does have is the run's unique name,
<image>-<version>-<run suffix>, in the home region and every region Packer
copied it to. This finds AMIs of this account with such a name whose <image> is
one of this project's images (another team's AMI may be named alike) and no
bakery:image tag (a bake that got as far as tagging set it), and decides whether the run that made it is over:

- this checkout's catalog holds the run's version (its run id ends in the suffix):
  over unless the row is still pending and its pid alive;
- else (another checkout's bake, or a run whose clean-up was refused and forgotten):
  over once the AMI is older than UNKNOWN_RUN_AGE, which no bake lasts.

An AMI with any other bakery:managed tag is no leftover: `false` marks one a
human protected, and `true` without bakery:run was not left by a bake. One with
bakery:managed=true and bakery:run is a claim an earlier clean-up made and could not
finish: it is a leftover still. A leftover is then claimed (bakery.aws.amis.claim:
bakery:managed and bakery:run, the one change the shipped IAM policy allows on an
untagged AMI) and deregistered with its snapshots like any other AMI gc deletes.

The disk builder (bakery.builders.disk) leaves another kind: a snapshot it started through the EBS direct APIs
(tagged bakery:managed, bakery:builder=disk and its bakery:run from the start) whose run was killed before it
registered the AMI: pending, errored, or even completed, and under no AMI. find_snapshots decides from the run's
directory in this checkout (.bakery/runs/<id>/pid): over once that pid is gone; a run this checkout does not know
is over once the snapshot is older than UNKNOWN_RUN_AGE; an errored snapshot is useless whoever made it. The disk
builder removes its image's such snapshots before it publishes, and gc removes all of them.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import amis, ebs_direct, tags
from bakery.aws.clients import AccessDenied
from bakery.catalog import Catalog
from bakery.processes import pid_alive

# packer_bake's AMI name: image (bakery.config.NAME_RE), version (YYYYMMDD.NNN), the run id's random suffix
RUN_AMI_NAME = re.compile(r"^(?P<image>[a-z0-9][a-z0-9_-]{0,62})-(?P<version>\d{8}\.\d{3,})-(?P<suffix>[0-9a-f]{6})\Z")
NAME_FILTER = "*-????????.???*-??????"  # EC2's wildcards: narrows what DescribeImages returns; the regex decides
UNKNOWN_RUN_AGE = timedelta(hours=24)


@dataclass
class Leftover:
    """One untagged AMI of a bake that is over, or one kept because its bake may still run (`reason` says which)."""

    region: str
    ami_id: str
    name: str
    image: str
    version: str
    run_id: str
    reason: str
    snapshots: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the DescribeImages entry, for the claim

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["raw"]
        return data


def bake_runs(catalog: Catalog | None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """This checkout's versions by (image, version, run suffix): which bake made them, and whether it is pending."""
    if catalog is None:
        return {}
    return {(row["image"], row["version"], str(row["run_id"]).rsplit("-", 1)[-1]): row
            for row in catalog.versions(status=None) if row.get("run_id")}


def _decide(image: dict[str, Any], match: re.Match[str], runs: dict[tuple[str, str, str], dict[str, Any]],
            now: datetime) -> tuple[bool, str, str]:
    """(is it a leftover, the run id to claim it for, why)."""
    row = runs.get((match["image"], match["version"], match["suffix"]))
    if row is not None:
        if row["status"] == "pending" and pid_alive(int(row["pid"] or 0)):
            return False, row["run_id"], f"bake {row['run_id']} (pid {row['pid']}) is still running"
        return True, row["run_id"], f"bake {row['run_id']} ended without tagging it"
    run_id = f"unknown-build-{match['suffix']}"
    try:
        created = datetime.fromisoformat(str(image.get("CreationDate", "")).replace("Z", "+00:00"))
    except ValueError:
        created = now
    if now - created < UNKNOWN_RUN_AGE:
        return False, run_id, (f"no bake of this checkout made it and it is younger than "
                               f"{UNKNOWN_RUN_AGE.total_seconds() / 3600:.0f} h: another checkout may still be baking")
    return True, run_id, f"untagged for over {UNKNOWN_RUN_AGE.total_seconds() / 3600:.0f} h: its bake is over"


def unclaimed_or_claimed_by_bakery(found: dict[str, str]) -> bool:
    """No bakery:managed tag, or the one a claim (bakery.aws.amis.claim) left: true with the run it was claimed for."""
    return tags.MANAGED not in found or (found[tags.MANAGED] == "true" and tags.RUN in found)


def find(ec2, region: str, runs: dict[tuple[str, str, str], dict[str, Any]], images: Collection[str],
         now: datetime | None = None) -> tuple[list[Leftover], list[Leftover]]:
    """(leftovers to remove, untagged AMIs kept because their bake may still run) in one region, of `images` only
    (the project's image names)."""
    now = now or datetime.now(UTC)
    remove: list[Leftover] = []
    keep: list[Leftover] = []
    for image in amis.owned_named(ec2, NAME_FILTER):
        match = RUN_AMI_NAME.match(image.get("Name", ""))
        found = tags.from_tag_list(image.get("Tags"))
        if not match or match["image"] not in images or tags.IMAGE in found:
            continue  # not this project's name, or tagged by its bake: the version plan deals with it
        if not unclaimed_or_claimed_by_bakery(found):
            continue  # bakery:managed=false (protected) or set by someone else: never touched
        gone, run_id, reason = _decide(image, match, runs, now)
        entry = Leftover(region=region, ami_id=image["ImageId"], name=image["Name"], image=match["image"],
                         version=match["version"], run_id=run_id, reason=reason,
                         snapshots=amis.snapshot_ids(image), raw=image)
        (remove if gone else keep).append(entry)
    return remove, keep


def dead_pending(leftovers: list[Leftover], runs: dict[tuple[str, str, str], dict[str, Any]]) -> list[tuple[str, str]]:
    """The pending catalog versions of the dead bakes whose leftovers these are (to forget once they are gone)."""
    rows = [runs.get((e.image, e.version, e.run_id.rsplit("-", 1)[-1])) for e in leftovers]
    return sorted({(r["image"], r["version"]) for r in rows if r is not None and r["status"] == "pending"})


@dataclass
class SnapshotLeftover:
    """A snapshot the disk builder started whose run is over (or one kept because its run may still go on)."""

    region: str
    snapshot_id: str
    image: str
    run_id: str
    state: str
    reason: str
    deleted: bool = False  # set once gc (or the disk builder) removed it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_over(state_dir: Path, run_id: str, started: datetime | None, now: datetime) -> tuple[bool, str]:
    """(is the run over, why), from its pid file in this checkout, else from the snapshot's age."""
    try:
        pid = int((state_dir / "runs" / run_id / "pid").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pid = 0
    if pid:
        if pid_alive(pid):
            return False, f"run {run_id} (pid {pid}) is still running"
        return True, f"run {run_id} (pid {pid}) ended before it registered an AMI"
    hours = UNKNOWN_RUN_AGE.total_seconds() / 3600
    if started is not None and now - started >= UNKNOWN_RUN_AGE:
        return True, f"no run of this checkout made it and it is older than {hours:.0f} h: its run is over"
    return False, f"no run of this checkout made it and it is younger than {hours:.0f} h: another may still publish"


DISK_SNAPSHOT_STATES = ("pending", "error", "completed")  # completed too: a run killed before RegisterImage


def find_snapshots(ec2, region: str, state_dir: Path, image: str | None = None,
                   now: datetime | None = None) -> tuple[list[SnapshotLeftover], list[SnapshotLeftover]]:
    """(snapshots of disk builds that are over, snapshots kept because their build may still run) in one region;
    of `image` only when given. Nothing is changed here."""
    now = now or datetime.now(UTC)
    found = [s for s in ebs_direct.leftover_snapshots(ec2, DISK_SNAPSHOT_STATES)
             if tags.from_tag_list(s.get("Tags")).get(tags.BUILDER) == "disk"
             and (image is None or tags.from_tag_list(s.get("Tags")).get(tags.IMAGE) == image)]
    if not found:
        return [], []
    # a run that registered an AMI got past its upload (an endpoint may show the AMI over another snapshot: moto)
    registered = {tags.from_tag_list(i.get("Tags")).get(tags.RUN) for i in amis.find_amis(ec2, {tags.MANAGED: "true"})}
    remove: list[SnapshotLeftover] = []
    keep: list[SnapshotLeftover] = []
    for snapshot in found:
        facts = tags.from_tag_list(snapshot.get("Tags"))
        run_id, state = facts.get(tags.RUN, ""), snapshot.get("State", "")
        if run_id in registered:
            continue
        if state == "error":
            over, reason = True, f"its upload failed (state error, run {run_id})"
        else:
            over, reason = _run_over(state_dir, run_id, snapshot.get("StartTime"), now)
        entry = SnapshotLeftover(region=region, snapshot_id=snapshot["SnapshotId"], image=facts.get(tags.IMAGE, ""),
                                 run_id=run_id, state=state, reason=reason)
        (remove if over else keep).append(entry)
    return remove, keep


def remove_snapshots(ec2, leftovers: list[SnapshotLeftover]) -> tuple[list[str], list[dict[str, str]]]:
    """Delete each leftover snapshot (gone already counts as deleted); ([deleted ids], [{snapshot_id, error}])."""
    deleted: list[str] = []
    failed: list[dict[str, str]] = []
    for entry in leftovers:
        try:
            ec2.delete_snapshot(SnapshotId=entry.snapshot_id)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InvalidSnapshot.NotFound":
                failed.append({"snapshot_id": entry.snapshot_id, "error": str(exc)})
                continue
        except AccessDenied as exc:  # this snapshot only: the rest still go
            failed.append({"snapshot_id": entry.snapshot_id, "error": str(exc)})
            continue
        entry.deleted = True
        deleted.append(entry.snapshot_id)
    return deleted, failed


def remove_planned_snapshots(ec2_for, leftovers: list[SnapshotLeftover], note) -> list[dict[str, str]]:
    """gc's removal of the snapshots it planned, region by region (`ec2_for(region)` gives the client); returns the
    failures as gc reports them ({region, ami_id: the snapshot, error}); `note` says what went."""
    failed: list[dict[str, str]] = []
    for region in sorted({e.region for e in leftovers}):
        here = [e for e in leftovers if e.region == region]
        _, problems = remove_snapshots(ec2_for(region), here)
        failed += [{"region": region, "ami_id": p["snapshot_id"], "error": p["error"]} for p in problems]
        for entry in here:
            if entry.deleted:
                note(f"gc: deleted snapshot {entry.snapshot_id} ({entry.state}) in {region}: {entry.reason}")
    return failed


def snapshot_lines(remove: list[SnapshotLeftover], keep: list[SnapshotLeftover], dry_run: bool) -> list[str]:
    """gc's report lines for the disk builds' snapshots."""
    verb = "would delete" if dry_run else "deleted"
    return ([f"{verb} leftover snapshot {e.snapshot_id} in {e.region} ({e.image}, {e.state}): {e.reason}"
             for e in remove if dry_run or e.deleted]
            + [f"keep leftover snapshot {e.snapshot_id} in {e.region} ({e.image}): {e.reason}" for e in keep])
