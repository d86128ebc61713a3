"""What `bake.py distribute` shares in each region, and the sharing itself.

The home AMI is shared once distribute found that it passed `verify --target
aws`. In another region, AMIs are found by their tags, which anyone allowed to
tag can put on any AMI (Packer's own copies, an Image Builder distribution's,
an older failed bake): such an AMI is shared only when readback_record.verdict
passes for it (its own readback record, or the copy record an earlier run wrote
for the copy it made). The copy this very run made of the verified home AMI is
shared as it is. Any other AMI stays unshared: the region is reported with why,
and distribute fails once it shared what it may.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bakery.aws import readback_record, tags


@dataclass
class RegionResult:
    region: str
    ami_id: str
    copied: bool = False
    state: str = ""
    snapshots: list[str] = field(default_factory=list)
    tagged: list[str] = field(default_factory=list)  # resources that lacked the version's tags
    launch_permission_added: list[str] = field(default_factory=list)
    create_volume_permission_added: dict[str, list[str]] = field(default_factory=dict)  # snapshot -> accounts
    record: str = ""  # the verification record that vouches for this AMI ('' = none: the gate refuses it)
    record_written: bool = False  # a copy's record, written by this run
    shared: bool = False  # shared with every account asked for (False too when none was asked)
    why: str = ""  # why this AMI may not be shared ('' = it may)

    @property
    def changed(self) -> bool:
        return self.copied or self.record_written or bool(
            self.tagged or self.launch_permission_added or self.create_volume_permission_added)


def refusal(ssm, entry: RegionResult, image_data: dict[str, Any], *, verified: bool) -> str:
    """Why this region's AMI may not be shared ('' when it may). `verified`: distribute checked it already (the
    home AMI); the copy this run made is its verified source's copy."""
    if verified or entry.copied:
        return ""
    passed, summary = readback_record.verdict(ssm, image_data, entry.region)
    if passed:
        return ""
    if passed is False:
        return f"its newest verify --target aws failed ({summary}); fix the image and bake a new version"
    return ("it was found by its tags and not copied by this run, and no readback record or copy record vouches for "
            f"it; run ./bake.py verify {_named(image_data)} --target aws --region {entry.region}, or deregister it "
            "(and its snapshots) and run distribute again for a copy of the verified AMI")


def _named(image_data: dict[str, Any]) -> str:
    found = tags.from_tag_list(image_data.get("Tags"))
    return f"{found.get(tags.IMAGE, '?')}:{found.get(tags.VERSION, '?')}"


def share(ec2, result: RegionResult, accounts: list[str]) -> None:
    """Launch permission on the AMI, create-volume permission on its snapshots, for the accounts that lack them."""
    if not accounts:
        return
    permissions = ec2.describe_image_attribute(ImageId=result.ami_id, Attribute="launchPermission")["LaunchPermissions"]
    have = {p.get("UserId") for p in permissions}
    missing = [a for a in accounts if a not in have]
    if missing:
        ec2.modify_image_attribute(ImageId=result.ami_id, LaunchPermission={"Add": [{"UserId": a} for a in missing]})
        result.launch_permission_added = missing
    for snapshot in result.snapshots:
        answer = ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
        have = {p.get("UserId") for p in answer["CreateVolumePermissions"]}
        missing = [a for a in accounts if a not in have]
        if missing:
            ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add",
                                          UserIds=missing)
            result.create_volume_permission_added[snapshot] = missing
    result.shared = True


def unshared(regions: list[RegionResult], accounts: list[str]) -> str:
    """One line naming the regions whose AMI was not shared with the accounts asked for ('' when none)."""
    if not accounts:
        return ""
    left = [f"{r.region} ({r.ami_id}): {r.why}" for r in regions if r.why]
    return f"not shared in {'; '.join(left)}" if left else ""
