"""`bake.py gc --target aws --keep N`: deregister old AMIs of this tool, and their snapshots, in every configured region.

Only AMIs tagged bakery:managed=true are considered. Per image the newest N
versions (by bakery:version) stay, and so does every version that something
still needs:

- an Auto Scaling group launches it (the launch template version the group uses,
  plain or in a mixed instances policy, or its launch configuration);
- an instance runs it (pending, running, stopping or stopped);
- an environment's SSM parameter `/bakery/<image>/<env>/ami-id` names it (what it
  runs now), or the previous distinct value of that parameter does (its rollback target).

A version is kept or deleted as a whole: its copies in every region go together.
Deregistering leaves the snapshots behind (Packer's force_deregister does too), so
they are deleted with their AMI. The plan is a pure function; `--dry-run` stops there.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import amis, tags
from bakery.aws.catalog_read import AmiVersion, managed_amis, read_releases
from bakery.aws.clients import client, resolve_region
from bakery.aws.releases import AMI_ID, previous_release
from bakery.progress import Progress

log = logging.getLogger("bakery.aws.gc")

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclass
class AwsPlan:
    keep: int
    regions: list[str]
    delete: list[dict[str, Any]] = field(default_factory=list)  # {image, version, amis: [AmiVersion dicts], reason}
    kept: list[dict[str, Any]] = field(default_factory=list)  # {image, version, amis, reasons}
    deleted: list[dict[str, Any]] = field(default_factory=list)  # {region, ami_id, snapshots} once carried out
    failed: list[dict[str, Any]] = field(default_factory=list)  # {region, ami_id, error}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_aws(found: list[AmiVersion], by_ami: dict[str, list[str]], keep: int, regions: list[str]) -> AwsPlan:
    """Which versions go: older than the newest `keep` of their image and needed by nothing in `by_ami` (AMI id -> why)."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    plan = AwsPlan(keep=keep, regions=regions)
    grouped: dict[tuple[str, str], list[AmiVersion]] = defaultdict(list)
    for ami in found:
        grouped[(ami.image, ami.version)].append(ami)
    images = sorted({image for image, _ in grouped})
    for image in images:
        versions = sorted((v for i, v in grouped if i == image), reverse=True)
        for rank, version in enumerate(versions):
            copies = sorted(grouped[(image, version)], key=lambda a: a.region)
            reasons = [f"one of the newest {keep}"] if rank < keep else []
            for ami in copies:
                reasons += [f"{why} ({ami.ami_id} in {ami.region})" for why in by_ami.get(ami.ami_id, [])]
                if ami.state == "pending":
                    reasons.append(f"{ami.ami_id} in {ami.region} is still pending (a copy or build in flight)")
            if not version:
                reasons.append("no bakery:version tag: bakery cannot tell how old it is")
            entry = {"image": image, "version": version, "amis": [a.to_dict() for a in copies]}
            if reasons:
                plan.kept.append({**entry, "reasons": reasons})
            else:
                plan.delete.append({**entry, "reason": f"older than the newest {keep} and in use nowhere"})
    return plan


def _add(reasons: dict[str, list[str]], ami_id: str | None, why: str) -> None:
    if ami_id:
        reasons[ami_id].append(why)


def auto_scaling_use(region: str, reasons: dict[str, list[str]]) -> None:
    """AMIs the region's Auto Scaling groups launch: through launch template versions or launch configurations."""
    ec2, autoscaling = client("ec2", region), client("autoscaling", region)
    launched: dict[tuple[str, str, str], list[str]] = defaultdict(list)  # (LaunchTemplateId|LaunchTemplateName, value, version) -> groups
    configurations: dict[str, list[str]] = defaultdict(list)
    for page in autoscaling.get_paginator("describe_auto_scaling_groups").paginate():
        for group in page["AutoScalingGroups"]:
            mixed = (group.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}
            specs = [group.get("LaunchTemplate"), mixed.get("LaunchTemplateSpecification")]
            specs += [o.get("LaunchTemplateSpecification") for o in mixed.get("Overrides") or []]
            for spec in filter(None, specs):
                by = "LaunchTemplateId" if spec.get("LaunchTemplateId") else "LaunchTemplateName"
                key = (by, spec[by])
                launched[(*key, spec.get("Version") or "$Default")].append(group["AutoScalingGroupName"])
            if group.get("LaunchConfigurationName"):
                configurations[group["LaunchConfigurationName"]].append(group["AutoScalingGroupName"])
    for (field_name, value, version), groups in launched.items():  # one call per distinct (template, version): $Latest needs its own
        for lt in ec2.describe_launch_template_versions(**{field_name: value}, Versions=[version])["LaunchTemplateVersions"]:
            _add(reasons, (lt.get("LaunchTemplateData") or {}).get("ImageId"),
                 f"Auto Scaling group {', '.join(sorted(set(groups)))} launches it "
                 f"(launch template {lt['LaunchTemplateName']} version {lt['VersionNumber']})")
    if configurations:
        names = sorted(configurations)
        for start in range(0, len(names), 50):
            for lc in autoscaling.describe_launch_configurations(LaunchConfigurationNames=names[start:start + 50])["LaunchConfigurations"]:
                groups = ", ".join(configurations[lc["LaunchConfigurationName"]])
                _add(reasons, lc.get("ImageId"), f"Auto Scaling group {groups} launches it (launch configuration {lc['LaunchConfigurationName']})")


def instance_use(region: str, reasons: dict[str, list[str]]) -> None:
    """AMIs that instances in the region were launched from (an instance refresh may still roll back to them)."""
    pages = client("ec2", region).get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}])
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                _add(reasons, instance.get("ImageId"), f"instance {instance['InstanceId']} runs it")


def release_use(region: str, reasons: dict[str, list[str]]) -> None:
    """AMIs named by an environment's release parameter in this region, now or as its rollback target."""
    ssm = client("ssm", region)
    for release in read_releases(ssm):
        if not release.ami_id:
            continue
        _add(reasons, release.ami_id, f"{release.env} runs it ({release.parameter})")
        _add(reasons, previous_release(ssm, release.image, release.env, AMI_ID), f"rollback target of {release.env} (history of {release.parameter})")


def plan(settings, keep: int, progress: Progress, env_regions: list[str] | tuple[str, ...] = ()) -> AwsPlan:
    """Look at every configured region (and every aws environment's) and decide; nothing is changed here."""
    home = resolve_region(settings.region)
    regions = list(dict.fromkeys([*settings.all_regions(home), *env_regions]))
    found: list[AmiVersion] = []
    reasons: dict[str, list[str]] = defaultdict(list)
    for region in regions:
        progress.note(f"gc: looking at AMIs, Auto Scaling groups, instances and release parameters in {region}")
        release_use(region, reasons)
        found += managed_amis(client("ec2", region), region)
        auto_scaling_use(region, reasons)
        instance_use(region, reasons)
    return plan_aws(found, reasons, keep, regions)


def _tag_snapshots(ec2, ami: dict[str, Any]) -> None:
    """Give the AMI's snapshots its bakery tags before deleting them: Image Builder leaves snapshots untagged, the IAM policy lets
    bakery delete only tagged ones, and a snapshot whose deletion fails stays findable by tag."""
    if ami["snapshots"]:
        ec2.create_tags(Resources=ami["snapshots"], Tags=tags.as_tag_list({tags.MANAGED: "true", tags.IMAGE: ami["image"],
                                                                           tags.VERSION: ami["version"]}))


def apply(planned: AwsPlan, progress: Progress, catalog=None) -> AwsPlan:
    """Deregister every planned AMI and delete its snapshots; one failure does not stop the others."""
    for entry in planned.delete:
        for ami in entry["amis"]:
            ec2 = client("ec2", ami["region"])
            try:
                _tag_snapshots(ec2, ami)
                snapshots = amis.deregister_with_snapshots(ec2, ami["ami_id"])
            except ClientError as exc:  # AccessDenied stops gc: every other AMI would be refused the same way
                planned.failed.append({"region": ami["region"], "ami_id": ami["ami_id"], "error": str(exc)})
                continue
            planned.deleted.append({"region": ami["region"], "ami_id": ami["ami_id"], "snapshots": snapshots})
            progress.note(f"gc: deregistered {entry['image']}:{entry['version']} {ami['ami_id']} in {ami['region']} "
                          f"and deleted {len(snapshots)} snapshot(s)")
    if catalog is not None:
        gone = {d["ami_id"] for d in planned.deleted}
        catalog.discard_versions([(r["image"], r["version"]) for r in catalog.gc_versions() if r["image_ref"] in gone])
    return planned
