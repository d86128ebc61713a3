"""`bake.py gc --target aws --keep N`: deregister old AMIs of this tool, and their snapshots, in every configured
region.

Only AMIs tagged bakery:managed=true are considered. Per image the newest N
versions (by bakery:version) stay, and so does every version that something
still needs:

- an Auto Scaling group launches it (the launch template version the group uses,
  plain or in a mixed instances policy, or its launch configuration);
- an instance runs it (pending, running, stopping or stopped);
- an environment's SSM parameter `/bakery/<image>/<env>/ami-id` names it (what it
  runs now), or the previous distinct value of that parameter does (its rollback target);
- its launch permission names another account, an organisation or everyone: gc
  cannot see what other accounts run, so shared AMIs stay unless --include-shared.

A version is kept or deleted as a whole: its copies in every region go together.
Deregistering leaves the snapshots behind (Packer's force_deregister does too), so
they are deleted with their AMI (DeregisterImage with DeleteAssociatedSnapshots, then
any snapshot still there one by one). The plan is a pure function; `--dry-run` stops there.

Applying runs under every aws environment's fleet lock (bakery.gc.locks.environment_locks),
and each AMI is looked at once more just before it goes (instances launched from it,
the groups' launch template versions): one that became used meanwhile is kept and reported.
AMIs a dead Packer bake registered but never tagged (bakery.gc.aws_leftovers) are found by their run's
name (one of the project's images), claimed with bakery:managed and removed too, whatever --keep says; their
reports say "leftover". One whose claim or removal AWS denies stays and is reported; the rest of gc goes on.
collect_aws is the whole command; its AwsGcReport says what happened as JSON or lines.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import amis
from bakery.aws.catalog_read import AmiVersion, environment_regions, managed_amis, read_releases
from bakery.aws.clients import AccessDenied, client, resolve_region
from bakery.aws.releases import AMI_ID, previous_release
from bakery.catalog import Catalog
from bakery.config import Project
from bakery.errors import OperationError
from bakery.gc import aws_leftovers
from bakery.gc.locks import environment_locks
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
    # {region, ami_id, reasons}: in use by the time it was to go
    skipped: list[dict[str, Any]] = field(default_factory=list)
    leftovers: list[aws_leftovers.Leftover] = field(default_factory=list)  # untagged AMIs of dead bakes: they go
    leftovers_kept: list[aws_leftovers.Leftover] = field(default_factory=list)  # untagged, their bake may still run
    forget: list[tuple[str, str]] = field(default_factory=list)  # the dead bakes' pending catalog versions
    snapshots: list[aws_leftovers.SnapshotLeftover] = field(default_factory=list)  # of dead disk builds: they go
    snapshots_kept: list[aws_leftovers.SnapshotLeftover] = field(default_factory=list)  # their build may still run

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["leftovers"] = [e.to_dict() for e in self.leftovers]
        data["leftovers_kept"] = [e.to_dict() for e in self.leftovers_kept]
        del data["forget"]
        return data


@dataclass
class AwsGcReport:
    """One `bake.py gc --target aws`: the plan and, unless a dry run, what became of it."""

    dry_run: bool
    plan: AwsPlan

    def to_dict(self) -> dict[str, Any]:
        return {"target": "aws", "dry_run": self.dry_run, **self.plan.to_dict()}

    def lines(self) -> list[str]:
        """The report for a terminal: the copies that went (or would go), why the rest stays, what became used."""
        planned, verb = self.plan, "would delete" if self.dry_run else "deleted"
        busy = planned.delete or planned.leftovers or planned.snapshots
        lines = [] if busy else [f"nothing to delete in {', '.join(planned.regions)}"]
        gone = {d["ami_id"] for d in planned.deleted}
        lines += [f"{verb} leftover {e.ami_id} in {e.region} ({e.name}, {len(e.snapshots)} snapshots): {e.reason}"
                  for e in planned.leftovers if self.dry_run or e.ami_id in gone]
        lines += [f"keep leftover {e.ami_id} in {e.region} ({e.name}): {e.reason}" for e in planned.leftovers_kept]
        lines += aws_leftovers.snapshot_lines(planned.snapshots, planned.snapshots_kept, self.dry_run)
        for entry in planned.delete:
            copies = [a for a in entry["amis"] if self.dry_run or a["ami_id"] in gone]
            where = ", ".join(f"{a['ami_id']} in {a['region']} ({len(a['snapshots'])} snapshots)" for a in copies)
            if copies:
                lines.append(f"{verb} {entry['image']}:{entry['version']}: {where} ({entry['reason']})")
        lines += [f"keep {e['image']}:{e['version']}: {'; '.join(e['reasons'])}" for e in planned.kept]
        lines += [f"kept {e['ami_id']} in {e['region']} after all: {'; '.join(e['reasons'])}" for e in planned.skipped]
        return lines

    def raise_for_failures(self) -> None:
        """AMIs that could not be deleted make the command fail (after its report)."""
        if self.plan.failed:
            first = self.plan.failed[0]
            raise OperationError(f"{len(self.plan.failed)} AMI(s) could not be deleted, "
                                 f"first {first['ami_id']} in {first['region']}: {first['error']}")


def plan_aws(found: list[AmiVersion], by_ami: dict[str, list[str]], keep: int, regions: list[str]) -> AwsPlan:
    """Which versions go: older than the newest `keep` of their image and needed by nothing in `by_ami`
    (AMI id -> why)."""
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
    # (LaunchTemplateId|LaunchTemplateName, value, version) -> groups
    launched: dict[tuple[str, str, str], list[str]] = defaultdict(list)
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
    # one call per distinct (template, version): $Latest needs its own
    for (field_name, value, version), groups in launched.items():
        answer = ec2.describe_launch_template_versions(**{field_name: value}, Versions=[version])
        for lt in answer["LaunchTemplateVersions"]:
            _add(reasons, (lt.get("LaunchTemplateData") or {}).get("ImageId"),
                 f"Auto Scaling group {', '.join(sorted(set(groups)))} launches it "
                 f"(launch template {lt['LaunchTemplateName']} version {lt['VersionNumber']})")
    if configurations:
        names = sorted(configurations)
        for start in range(0, len(names), 50):
            answer = autoscaling.describe_launch_configurations(LaunchConfigurationNames=names[start:start + 50])
            for lc in answer["LaunchConfigurations"]:
                users = ", ".join(configurations[lc["LaunchConfigurationName"]])
                _add(reasons, lc.get("ImageId"),
                     f"Auto Scaling group {users} launches it (launch configuration {lc['LaunchConfigurationName']})")


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
        _add(reasons, previous_release(ssm, release.image, release.env, AMI_ID),
             f"rollback target of {release.env} (history of {release.parameter})")


def describe_sharing(permissions: list[dict[str, str]]) -> str:
    """The launch permission entries in words ('' when only this account may launch it)."""
    accounts = sorted(p["UserId"] for p in permissions if p.get("UserId"))
    groups = sorted(p["Group"] for p in permissions if p.get("Group"))
    organisations = sorted(p.get("OrganizationArn") or p.get("OrganizationalUnitArn") or "" for p in permissions
                           if p.get("OrganizationArn") or p.get("OrganizationalUnitArn"))
    parts = [f"accounts {', '.join(accounts)}"] if accounts else []
    parts += ["everyone (public)" if g == "all" else f"group {g}" for g in groups]
    parts += [f"organisation {o}" for o in organisations]
    return " and ".join(parts)


def shared_use(region: str, found: list[AmiVersion], reasons: dict[str, list[str]]) -> None:
    """AMIs other accounts may launch: what they run is invisible from here, so such an AMI is treated as in use."""
    ec2 = client("ec2", region)
    for ami in found:
        if ami.region != region:
            continue
        try:
            answer = ec2.describe_image_attribute(ImageId=ami.ami_id, Attribute="launchPermission")
            permissions = answer["LaunchPermissions"]
        except ClientError as exc:
            if exc.response["Error"]["Code"].startswith("InvalidAMIID"):
                continue  # gone meanwhile
            raise
        shared = describe_sharing(permissions)
        if shared:
            _add(reasons, ami.ami_id, f"shared with {shared} (--include-shared deletes it anyway)")


def plan(settings, keep: int, progress: Progress, env_regions: list[str] | tuple[str, ...] = (),
         include_shared: bool = False, catalog: Catalog | None = None, images: Collection[str] = (),
         state_dir: Path | None = None) -> AwsPlan:
    """Look at every configured region (and every aws environment's) and decide; nothing is changed here.

    `catalog` tells which bakes of this checkout still run (an untagged AMI of one stays); untagged AMIs are
    looked for only under the names of `images` (the project's: none given, none looked for)."""
    home = resolve_region(settings.region)
    regions = list(dict.fromkeys([*settings.all_regions(home), *env_regions]))
    found: list[AmiVersion] = []
    reasons: dict[str, list[str]] = defaultdict(list)
    runs = aws_leftovers.bake_runs(catalog)
    left: list[aws_leftovers.Leftover] = []
    left_kept: list[aws_leftovers.Leftover] = []
    snapshots: tuple[list, list] = ([], [])
    for region in regions:
        progress.note(f"gc: looking at AMIs, Auto Scaling groups, instances and release parameters in {region}")
        release_use(region, reasons)
        gone, kept = aws_leftovers.find(client("ec2", region), region, runs, images)
        left, left_kept = left + gone, left_kept + kept
        if state_dir is not None:  # a disk build's run is judged by its pid file there
            dead, live = aws_leftovers.find_snapshots(client("ec2", region), region, state_dir)
            snapshots = (snapshots[0] + dead, snapshots[1] + live)
        untagged = {e.ami_id for e in gone + kept}  # claimed by an earlier gc, maybe: still no version to plan by
        region_amis = [a for a in managed_amis(client("ec2", region), region) if a.ami_id not in untagged]
        found += region_amis
        auto_scaling_use(region, reasons)
        instance_use(region, reasons)
        if not include_shared:
            shared_use(region, region_amis, reasons)
    planned = plan_aws(found, reasons, keep, regions)
    planned.leftovers, planned.leftovers_kept = left, left_kept
    planned.forget = aws_leftovers.dead_pending(left, runs)
    planned.snapshots, planned.snapshots_kept = snapshots
    return planned


def use_now(region: str, ami_id: str) -> list[str]:
    """Why the AMI is needed at this moment: instances launched from it, groups whose launch template version
    names it."""
    reasons: dict[str, list[str]] = defaultdict(list)
    pages = client("ec2", region).get_paginator("describe_instances").paginate(
        Filters=[{"Name": "image-id", "Values": [ami_id]},
                 {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}])
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                _add(reasons, ami_id, f"instance {instance['InstanceId']} runs it")
    auto_scaling_use(region, reasons)
    return reasons.get(ami_id, [])


def deregister(ec2, ami_id: str) -> tuple[list[str], list[str]]:
    """Deregister the AMI and delete its snapshots without tagging anything first: AWS deletes them with the AMI
    (DeleteAssociatedSnapshots); any it left (refused, or an endpoint that ignores the flag) are deleted one by one.
    Returns (snapshots gone, problems with the ones that stay); the AMI itself is gone either way."""
    image = amis.describe_ami(ec2, ami_id)
    if image is None:
        return [], []
    snapshots = amis.snapshot_ids(image)
    answer = ec2.deregister_image(ImageId=ami_id, DeleteAssociatedSnapshots=True)
    done = {r["SnapshotId"] for r in answer.get("DeleteSnapshotResults") or [] if r.get("ReturnCode") == "success"}
    left = [s for s in snapshots if s not in done]
    existing = set()
    if left:
        answer = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": left}])
        existing = {s["SnapshotId"] for s in answer["Snapshots"]}
    problems: dict[str, str] = {}
    for snapshot in sorted(existing):
        try:
            ec2.delete_snapshot(SnapshotId=snapshot)
        except ClientError as exc:  # another AMI uses it, say: the AMI is gone all the same
            error = exc.response["Error"]
            problems[snapshot] = f"snapshot {snapshot} stays: {error.get('Message') or error['Code']}"
        except AccessDenied as exc:
            problems[snapshot] = f"snapshot {snapshot} stays: {exc}"
    return [s for s in snapshots if s not in problems], list(problems.values())


def apply(planned: AwsPlan, progress: Progress, catalog=None) -> AwsPlan:
    """Deregister every planned AMI still unused and delete its snapshots; a failed call stops nothing else but
    AccessDenied, and the catalog forgets exactly the AMIs that went, whatever stopped the run."""
    try:
        _remove_leftovers(planned, progress)
        planned.failed += aws_leftovers.remove_planned_snapshots(lambda r: client("ec2", r), planned.snapshots,
                                                                 progress.note)
        for entry in planned.delete:
            for ami in entry["amis"]:
                busy = use_now(ami["region"], ami["ami_id"])
                if busy:
                    planned.skipped.append({"region": ami["region"], "ami_id": ami["ami_id"], "reasons": busy})
                    progress.note(f"gc: kept {ami['ami_id']} in {ami['region']}: {'; '.join(busy)} "
                                  "(since the plan was made)")
                    continue
                try:
                    snapshots, problems = deregister(client("ec2", ami["region"]), ami["ami_id"])
                # AccessDenied is no ClientError (bakery.aws.clients): it stops gc, as every AMI would be refused
                except ClientError as exc:
                    planned.failed.append({"region": ami["region"], "ami_id": ami["ami_id"], "error": str(exc)})
                    continue
                planned.deleted.append({"region": ami["region"], "ami_id": ami["ami_id"], "snapshots": snapshots})
                planned.failed += [{"region": ami["region"], "ami_id": ami["ami_id"], "error": problem}
                                   for problem in problems]
                progress.note(f"gc: deregistered {entry['image']}:{entry['version']} {ami['ami_id']} "
                              f"in {ami['region']} and deleted {len(snapshots)} snapshot(s)")
    finally:
        if catalog is not None:
            gone = {d["ami_id"] for d in planned.deleted}
            catalog.discard_versions([pair for pair in planned.forget if all(
                e.ami_id in gone for e in planned.leftovers if (e.image, e.version) == pair)])
            catalog.discard_versions([(r["image"], r["version"]) for r in catalog.gc_versions()
                                      if r["image_ref"] in gone])
    return planned


def _remove_leftovers(planned: AwsPlan, progress: Progress) -> None:
    """Claim each untagged AMI of a dead bake (the policy lets the role delete only bakery:managed ones), then
    deregister it with its snapshots; one an instance was launched from stays."""
    for entry in planned.leftovers:
        busy = use_now(entry.region, entry.ami_id)
        if busy:
            planned.skipped.append({"region": entry.region, "ami_id": entry.ami_id, "reasons": busy})
            continue
        ec2 = client("ec2", entry.region)
        try:
            amis.claim(ec2, entry.raw, entry.run_id)
            snapshots, problems = deregister(ec2, entry.ami_id)
        except ClientError as exc:
            planned.failed.append({"region": entry.region, "ami_id": entry.ami_id, "error": str(exc)})
            continue
        except AccessDenied as exc:  # this AMI only (a permissions boundary, say): the rest of gc goes on
            planned.skipped.append({"region": entry.region, "ami_id": entry.ami_id, "reasons": [str(exc)]})
            progress.note(f"gc: kept leftover {entry.ami_id} ({entry.name}) in {entry.region}: {exc}")
            continue
        planned.deleted.append({"region": entry.region, "ami_id": entry.ami_id, "snapshots": snapshots})
        planned.failed += [{"region": entry.region, "ami_id": entry.ami_id, "error": p} for p in problems]
        progress.note(f"gc: claimed and deregistered leftover {entry.ami_id} ({entry.name}) in {entry.region} and "
                      f"deleted {len(snapshots)} snapshot(s)")


def collect_aws(project: Project, keep: int, progress: Progress, *, dry_run: bool, include_shared: bool = False,
                catalog: Catalog | None = None) -> AwsGcReport:
    """Plan which old AMIs go in every region this project uses and, unless `dry_run`, deregister them.

    Deregistering runs under every aws environment's fleet lock, and the catalog (this project's unless given,
    opened only then) forgets the versions whose AMI went. A dry run changes nothing, so it takes no lock.
    The caller has checked that there are AWS credentials (bakery.aws.clients.check_credentials).
    """
    if catalog is None:
        from bakery.catalog import open_catalog

        catalog = open_catalog(project.state_dir)
    images = project.image_names()
    if dry_run:
        return AwsGcReport(True, plan(project.aws, keep, progress, environment_regions(project),
                                      include_shared=include_shared, catalog=catalog, images=images,
                                      state_dir=project.state_dir))
    with environment_locks(project, catalog, "aws"):
        planned = plan(project.aws, keep, progress, environment_regions(project), include_shared=include_shared,
                       catalog=catalog, images=images, state_dir=project.state_dir)
        apply(planned, progress, catalog)
    return AwsGcReport(False, planned)
