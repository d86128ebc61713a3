"""gc --target aws against moto server: old AMIs and their snapshots go, every AMI still needed stays, in every
region."""

from __future__ import annotations

import io
import os
import subprocess
from datetime import timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from bakery.aws import amis, clients
from bakery.catalog import open_catalog
from bakery.gc.aws import AwsGcReport
from bakery.progress import Progress
from tests.aws.ami_factory import version_ami, with_aws_settings
from tests.aws.test_packer import ManagedOnly
from tests.conftest import bake

pytestmark = pytest.mark.aws

HOME, OTHER = "us-east-1", "eu-west-1"


def snapshots_exist(ec2, snapshot_ids: list[str]) -> bool:
    try:
        return len(ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]) == len(snapshot_ids)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidSnapshot.NotFound"
        return False


def image_state(ec2, ami_id: str) -> str | None:
    images = ec2.describe_images(ImageIds=[ami_id])["Images"]
    return images[0]["State"] if images else None


@pytest.fixture
def estate(aws, proj):
    """sample v1..v6 in two regions, api a1..a5 at home; groups (pinned, mixed, launch configuration), an instance
    and SSM history."""
    with_aws_settings(proj, [HOME, OTHER])
    ec2 = {HOME: boto3.client("ec2", HOME), OTHER: boto3.client("ec2", OTHER)}
    amis = {}
    for n in range(1, 7):
        for region in (HOME, OTHER):
            amis[(f"v{n}", region)] = version_ami(ec2[region], "sample", f"20260101.00{n}", region)
    for n in range(1, 6):
        amis[(f"a{n}", HOME)] = version_ami(ec2[HOME], "api", f"20260101.00{n}")
    unmanaged = ec2[HOME].register_image(Name="hand-made", RootDeviceName="/dev/xvda")["ImageId"]
    # eu-west-1: the group is pinned to launch template version 1 (sample v2);
    # version 2 ($Latest, sample v1) is used by nothing.
    lt = ec2[OTHER].create_launch_template(LaunchTemplateName="webapp-qa", LaunchTemplateData={
        "ImageId": amis[("v2", OTHER)][0], "InstanceType": "t3.small"})
    ec2[OTHER].create_launch_template_version(LaunchTemplateName="webapp-qa", LaunchTemplateData={
        "ImageId": amis[("v1", OTHER)][0], "InstanceType": "t3.small"})
    boto3.client("autoscaling", OTHER).create_auto_scaling_group(
        AutoScalingGroupName="webapp-qa", MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{OTHER}a"],
        LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"})
    ec2[HOME].run_instances(ImageId=amis[("a1", HOME)][0], MinCount=1, MaxCount=1, InstanceType="t3.micro")
    # us-east-1: api a3 through a mixed instances policy on $Latest, api a4 through a launch configuration.
    autoscaling = boto3.client("autoscaling", HOME)
    ec2[HOME].create_launch_template(LaunchTemplateName="api-mixed",
                                     LaunchTemplateData={"ImageId": amis[("a3", HOME)][0]})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="api-mixed", MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{HOME}a"],
        MixedInstancesPolicy={"LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": "api-mixed", "Version": "$Latest"},
            "Overrides": [{"InstanceType": "t3.small"}]}})
    autoscaling.create_launch_configuration(LaunchConfigurationName="api-old", ImageId=amis[("a4", HOME)][0],
                                            InstanceType="t3.small")
    autoscaling.create_auto_scaling_group(AutoScalingGroupName="api-old", MinSize=0, MaxSize=1, DesiredCapacity=0,
                                          AvailabilityZones=[f"{HOME}a"], LaunchConfigurationName="api-old")
    ssm = boto3.client("ssm", HOME)
    # qa: now v5, rollback target v3 (the previous distinct value); v1 is older history
    for version in ("v1", "v3", "v3", "v5"):
        ssm.put_parameter(Name="/bakery/sample/qa/ami-id", Value=amis[(version, HOME)][0], Type="String",
                          Overwrite=True)
    ssm.put_parameter(Name="/bakery/sample/qa/version", Value="20260101.005", Type="String", Overwrite=True)
    return proj, ec2, amis, unmanaged


def test_gc_keeps_every_ami_in_use_and_the_rollback_target_and_deletes_the_rest_with_snapshots(estate):
    proj, ec2, amis, unmanaged = estate
    catalog = open_catalog(proj / ".bakery")
    recorded = catalog.reserve_version("sample", "run", 1)
    catalog.complete_version("sample", recorded, image_ref=amis[("v1", HOME)][0], image_id=amis[("v1", HOME)][0],
                             input_digest="sha256:x", provenance={}, layers=[])

    dry = bake(proj, "gc", "--target", "aws", "--keep", "1", "--dry-run", "--json")
    assert dry.rc == 0, dry.stderr
    planned = {(e["image"], e["version"]) for e in dry.json["delete"]}
    assert planned == {("sample", "20260101.001"), ("sample", "20260101.004"), ("api", "20260101.002")}
    kept = {e["version"] if e["image"] == "sample" else "api:" + e["version"]: " | ".join(e["reasons"])
            for e in dry.json["kept"]}
    assert "one of the newest 1" in kept["20260101.006"] and "one of the newest 1" in kept["api:20260101.005"]
    assert "qa runs it (/bakery/sample/qa/ami-id)" in kept["20260101.005"]
    assert "rollback target of qa" in kept["20260101.003"]
    assert "Auto Scaling group webapp-qa launches it (launch template webapp-qa version 1)" in kept["20260101.002"]
    assert "instance i-" in kept["api:20260101.001"]
    assert "Auto Scaling group api-mixed launches it (launch template api-mixed version 1)" in kept["api:20260101.003"]
    assert "Auto Scaling group api-old launches it (launch configuration api-old)" in kept["api:20260101.004"]
    # a dry run deletes nothing
    assert all(image_state(ec2[region], ami) == "available" for (_, region), (ami, _) in amis.items())

    real = bake(proj, "gc", "--target", "aws", "--keep", "1")
    assert real.rc == 0, real.stderr
    gone = {("v1", HOME), ("v1", OTHER), ("v4", HOME), ("v4", OTHER), ("a2", HOME)}
    for key, (ami, snapshots) in amis.items():
        region = key[1]
        if key in gone:
            assert image_state(ec2[region], ami) is None and not snapshots_exist(ec2[region], snapshots), key
        else:
            assert image_state(ec2[region], ami) == "available" and snapshots_exist(ec2[region], snapshots), key
    assert image_state(ec2[HOME], unmanaged) == "available"  # not bakery's: never touched
    assert catalog.version("sample", recorded) is None  # the catalog row of a deregistered AMI goes with it
    lines = real.stdout.splitlines()
    assert f"deleted sample:20260101.001: {amis[('v1', OTHER)][0]} in {OTHER} (1 snapshots), " \
        f"{amis[('v1', HOME)][0]} in {HOME} (1 snapshots) (older than the newest 1 and in use nowhere)" in lines
    assert any(line.startswith("keep sample:20260101.003: rollback target of qa") for line in lines)


def test_gc_refuses_a_keep_below_one_and_aws_without_keep(proj):
    zero = bake(proj, "gc", "--keep", "0")
    assert zero.rc == 2 and zero.stderr.count("\n") == 1 and "--keep must be at least 1, got 0" in zero.stderr
    missing = bake(proj, "gc", "--target", "aws")
    assert missing.rc == 2 and missing.stderr.count("\n") == 1 and "give --keep N" in missing.stderr


def test_images_on_aws_reads_versions_from_tags_and_releases_from_ssm(estate):
    from bakery.aws.catalog_read import aws_images
    from bakery.config import Project

    proj, _, amis, _ = estate
    listed = aws_images(Project(proj).aws, "sample")
    assert [r["version"] for r in listed["versions"]] == [f"20260101.00{n}" for n in range(6, 0, -1)]
    assert {r["version"]: r["environments"] for r in listed["versions"]}["20260101.005"] == ["qa"]
    assert listed["releases"] == [{"image": "sample", "env": "qa", "region": HOME, "ami_id": amis[("v5", HOME)][0],
                                   "version": "20260101.005", "parameter": "/bakery/sample/qa/ami-id"}]
    text = bake(proj, "images", "--target", "aws")
    assert text.rc == 0 and any(line.startswith("sample") and "20260101.005" in line and line.endswith("qa")
                                for line in text.stdout.splitlines())


@pytest.fixture
def three(aws, proj):
    """sample .001, .002, .003 at home; gc --keep 1 would delete .001 and .002."""
    with_aws_settings(proj, [HOME])
    ec2 = boto3.client("ec2", HOME)
    return proj, ec2, [version_ami(ec2, "sample", f"20260101.00{n}")[0] for n in (1, 2, 3)]


def test_gc_keeps_amis_other_accounts_may_launch_unless_include_shared(three):
    proj, ec2, (first, second, _) = three
    ec2.modify_image_attribute(ImageId=first, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    ec2.modify_image_attribute(ImageId=second, LaunchPermission={"Add": [{"Group": "all"}]})
    dry = bake(proj, "gc", "--target", "aws", "--keep", "1", "--dry-run")
    assert dry.rc == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert any(line.startswith("keep sample:20260101.001: shared with accounts 111122223333")
               for line in lines), dry.stdout
    assert any(line.startswith("keep sample:20260101.002: shared with everyone (public)") for line in lines), dry.stdout
    assert not any(line.startswith("would delete") for line in lines)
    forced = bake(proj, "gc", "--target", "aws", "--keep", "1", "--include-shared")
    assert forced.rc == 0, forced.stderr
    assert image_state(ec2, first) is None and image_state(ec2, second) is None


def test_gc_looks_again_just_before_deleting_and_keeps_what_became_used(three):
    from bakery.config import Project
    from bakery.gc import aws as aws_gc
    from bakery.progress import Progress

    proj, ec2, (first, second, _) = three
    planned = aws_gc.plan(Project(proj).aws, 1, Progress(io.StringIO()))
    assert [e["version"] for e in planned.delete] == ["20260101.002", "20260101.001"]
    launched = ec2.run_instances(ImageId=first, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    instance = launched["Instances"][0]["InstanceId"]
    template = ec2.create_launch_template(LaunchTemplateName="late",
                                          LaunchTemplateData={"ImageId": second})["LaunchTemplate"]
    boto3.client("autoscaling", HOME).create_auto_scaling_group(
        AutoScalingGroupName="late", MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{HOME}a"],
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "1"})
    aws_gc.apply(planned, Progress(io.StringIO()))
    skipped = {s["ami_id"]: " | ".join(s["reasons"]) for s in planned.skipped}
    assert skipped == {first: f"instance {instance} runs it",
                       second: "Auto Scaling group late launches it (launch template late version 1)"}
    assert planned.deleted == [] and image_state(ec2, first) == "available" and image_state(ec2, second) == "available"


def test_gc_waits_for_no_environment_a_deploy_holds(three):
    from tests.integration.test_gc_local import environment_held

    proj, ec2, (first, _, _) = three
    settings = {"target": "aws", "image": "sample", "instances": 1,
                "aws": {"auto_scaling_group": "prod", "launch_template": "prod"}}
    with environment_held(proj, "prod", settings):
        busy = bake(proj, "gc", "--target", "aws", "--keep", "1")
        dry = bake(proj, "gc", "--target", "aws", "--keep", "1", "--dry-run")
    assert busy.rc == 1 and busy.stderr.count("\n") == 1
    assert "environment 'prod' is busy: another bake.py (pid 4242)" in busy.stderr
    assert image_state(ec2, first) == "available"
    # a dry run changes nothing, so it takes no lock
    assert dry.rc == 0 and "would delete sample:20260101.001" in dry.stdout


def test_access_denied_midway_leaves_the_catalog_matching_what_is_left(three, monkeypatch):
    from bakery.aws import clients
    from bakery.config import Project
    from bakery.gc import aws as aws_gc
    from bakery.progress import Progress
    from tests.aws.test_retries import FailFirst

    proj, ec2, (first, second, _) = three
    catalog = open_catalog(proj / ".bakery")
    rows = {}
    for ami in (first, second):
        rows[ami] = catalog.reserve_version("sample", "run", 1)
        catalog.complete_version("sample", rows[ami], image_ref=ami, image_id=ami, input_digest="sha256:x",
                                 provenance={}, layers=[])
    denial = FailFirst("DeregisterImage", "UnauthorizedOperation", times=1, status=403, match=f"ImageId={first}")
    monkeypatch.setattr(aws_gc, "client",
                        lambda service, region=None: _attached(clients.client(service, region), denial))
    planned = aws_gc.plan(Project(proj).aws, 1, Progress(io.StringIO()))
    with pytest.raises(clients.AccessDenied, match="ec2:DeregisterImage"):
        aws_gc.apply(planned, Progress(io.StringIO()), catalog)
    # the second DeregisterImage was refused
    assert image_state(ec2, second) is None and image_state(ec2, first) == "available"
    assert catalog.version("sample", rows[second]) is None and catalog.version("sample", rows[first]) is not None


def _attached(made, handler):
    if made.meta.service_model.service_name == "ec2":
        handler.attach(made)
    return made


def gone_pid() -> int:
    """The pid of a process that has exited (what a SIGKILLed bake leaves in its catalog row)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def untagged_ami(ec2, name: str) -> tuple[str, list[str]]:
    """What Packer 1.6.6 leaves when it dies before its tag step: an AMI and its snapshot, neither tagged."""
    ami = ec2.register_image(Name=name, RootDeviceName="/dev/xvda", VirtualizationType="hvm",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])["ImageId"]
    return ami, amis.snapshot_ids(ec2.describe_images(ImageIds=[ami])["Images"][0])


def test_gc_claims_and_removes_the_untagged_amis_of_dead_bakes_and_nothing_else(aws, proj, monkeypatch):
    from bakery.config import Project
    from bakery.gc import aws as aws_gc
    from bakery.gc import aws_leftovers

    with_aws_settings(proj, [HOME, OTHER])
    ec2 = {HOME: boto3.client("ec2", HOME), OTHER: boto3.client("ec2", OTHER)}
    catalog = open_catalog(proj / ".bakery")
    dead_run, live_run = "20260101T000000Z-build-dead01", "20260101T000100Z-build-11fe01"
    dead_version = catalog.reserve_version("sample", dead_run, gone_pid())
    live_version = catalog.reserve_version("sample", live_run, os.getpid())
    # the dead bake's AMI at home and Packer's copy in the other region: the run's name, no tags
    dead = {region: untagged_ami(ec2[region], f"sample-{dead_version}-dead01") for region in (HOME, OTHER)}
    live, _ = untagged_ami(ec2[HOME], f"sample-{live_version}-11fe01")
    elsewhere, _ = untagged_ami(ec2[HOME], "sample-20260101.009-abcdef")  # no bake of this checkout: maybe running
    strangers = [untagged_ami(ec2[HOME], name)[0] for name in ("hand-made", "sample-20260101.001-copy")]
    version_ami(ec2[HOME], "sample", "20260101.001")

    dry = bake(proj, "gc", "--target", "aws", "--keep", "1", "--dry-run")
    assert dry.rc == 0, dry.stderr
    lines = dry.stdout.splitlines()
    for region, (ami, _) in dead.items():
        assert (f"would delete leftover {ami} in {region} (sample-{dead_version}-dead01, 1 snapshots): "
                f"bake {dead_run} ended without tagging it") in lines
    assert any(line.startswith(f"keep leftover {live} in {HOME} (sample-{live_version}-11fe01): bake {live_run} "
                               f"(pid {os.getpid()}) is still running") for line in lines), dry.stdout
    assert any(line.startswith(f"keep leftover {elsewhere} in {HOME}") and "another checkout may still be baking"
               in line for line in lines), dry.stdout
    assert not any(s in dry.stdout for s in strangers)

    guard = ManagedOnly()  # the policy: deregister and delete only what carries bakery:managed=true
    monkeypatch.setattr(aws_gc, "client", lambda service, region=None: guard.attach(clients.client(service, region)))
    progress = Progress(io.StringIO())
    images = Project(proj).image_names()
    planned = aws_gc.plan(Project(proj).aws, 1, progress, catalog=catalog, images=images)
    aws_gc.apply(planned, progress, catalog)
    assert guard.refused == [] and planned.failed == []
    for region, (ami, snapshots) in dead.items():
        assert ("DeregisterImage", ami) in guard.allowed
        assert image_state(ec2[region], ami) is None and not snapshots_exist(ec2[region], snapshots), region
    report = AwsGcReport(False, planned).lines()
    assert f"deleted leftover {dead[HOME][0]} in {HOME} (sample-{dead_version}-dead01, 1 snapshots): " \
        f"bake {dead_run} ended without tagging it" in report
    assert catalog.version("sample", dead_version) is None  # the dead bake's reservation goes with its AMIs
    assert catalog.version("sample", live_version)["status"] == "pending"
    for ami in (live, elsewhere, *strangers):
        image = ec2[HOME].describe_images(ImageIds=[ami])["Images"][0]
        assert image["State"] == "available" and not image.get("Tags"), ami  # not even claimed

    # a day on, the untagged AMI no bake of this checkout made is over too; the live bake's still is not
    monkeypatch.setattr(aws_leftovers, "UNKNOWN_RUN_AGE", timedelta(0))
    later = aws_gc.plan(Project(proj).aws, 1, progress, catalog=catalog, images=images)
    assert [(e.ami_id, e.run_id) for e in later.leftovers] == [(elsewhere, "unknown-build-abcdef")]
    assert [e.ami_id for e in later.leftovers_kept] == [live]
    aws_gc.apply(later, progress, catalog)
    assert guard.refused == [] and image_state(ec2[HOME], elsewhere) is None
    assert all(image_state(ec2[HOME], ami) == "available" for ami in (live, *strangers))


def test_gc_leftovers_are_only_this_projects_unprotected_amis_and_a_denied_one_is_reported(aws, proj, monkeypatch):
    """Another team's AMI named like a run's, one tagged bakery:managed=false and one whose claim AWS denies all
    stay; the denial is reported and the other leftovers still go (gc exits 0)."""
    from bakery.config import Project
    from bakery.gc import aws as aws_gc
    from bakery.gc import aws_leftovers
    from tests.aws.test_retries import FailFirst

    with_aws_settings(proj, [HOME])
    ec2 = boto3.client("ec2", HOME)
    foreign, _ = untagged_ami(ec2, "payments-20240101.001-abcdef")  # payments is no image of this project
    protected, _ = untagged_ami(ec2, "sample-20240101.002-0a1b2c")
    ec2.create_tags(Resources=[protected], Tags=[{"Key": "bakery:managed", "Value": "false"}])
    denied, _ = untagged_ami(ec2, "sample-20240101.003-0d0e0f")
    gone = [untagged_ami(ec2, f"sample-20240101.00{n}-{suffix}") for n, suffix in ((4, "1a2b3c"), (5, "4d5e6f"))]
    # a claim an earlier gc made whose removal did not finish: bakery:managed=true and the run, still no image tag
    ec2.create_tags(Resources=[gone[1][0]], Tags=[{"Key": "bakery:managed", "Value": "true"},
                                                 {"Key": "bakery:run", "Value": "unknown-build-4d5e6f"}])
    monkeypatch.setattr(aws_leftovers, "UNKNOWN_RUN_AGE", timedelta(0))
    denial = FailFirst("CreateTags", "UnauthorizedOperation", times=1, status=403, match=denied)
    monkeypatch.setattr(aws_gc, "client",
                        lambda service, region=None: _attached(clients.client(service, region), denial))
    catalog = open_catalog(proj / ".bakery")
    report = aws_gc.collect_aws(Project(proj), 1, Progress(io.StringIO()), dry_run=False, catalog=catalog)

    assert {e.ami_id for e in report.plan.leftovers} == {denied, *(ami for ami, _ in gone)}
    assert denial.injected == 1
    for ami, snapshots in gone:
        assert image_state(ec2, ami) is None and not snapshots_exist(ec2, snapshots), ami
    for ami in (foreign, protected, denied):
        assert image_state(ec2, ami) == "available", ami
    assert ec2.describe_images(ImageIds=[foreign])["Images"][0].get("Tags") in (None, [])  # not even claimed
    assert ec2.describe_images(ImageIds=[protected])["Images"][0]["Tags"] == [
        {"Key": "bakery:managed", "Value": "false"}]
    report.raise_for_failures()  # a denied leftover fails nothing
    lines = report.lines()
    denial_line = f"kept {denied} in {HOME} after all: AWS denied ec2:CreateTags"
    assert any(line.startswith(denial_line) for line in lines), lines
    assert not any(foreign in line or protected in line for line in lines), lines
