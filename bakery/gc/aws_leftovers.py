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
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bakery.aws import amis, tags
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
