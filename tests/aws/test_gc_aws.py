"""gc --target aws against moto server: old AMIs and their snapshots go, every AMI still needed stays, in every region."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from bakery.catalog import open_catalog
from tests.aws.ami_factory import version_ami, with_aws_settings
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
    """sample v1..v6 in two regions, api a1..a5 at home; groups (pinned, mixed, launch configuration), an instance and SSM history."""
    with_aws_settings(proj, [HOME, OTHER])
    ec2 = {HOME: boto3.client("ec2", HOME), OTHER: boto3.client("ec2", OTHER)}
    amis = {}
    for n in range(1, 7):
        for region in (HOME, OTHER):
            amis[(f"v{n}", region)] = version_ami(ec2[region], "sample", f"20260101.00{n}", region)
    for n in range(1, 6):
        amis[(f"a{n}", HOME)] = version_ami(ec2[HOME], "api", f"20260101.00{n}")
    unmanaged = ec2[HOME].register_image(Name="hand-made", RootDeviceName="/dev/xvda")["ImageId"]
    # eu-west-1: the group is pinned to launch template version 1 (sample v2); version 2 ($Latest, sample v1) is used by nothing.
    lt = ec2[OTHER].create_launch_template(LaunchTemplateName="webapp-qa",
                                           LaunchTemplateData={"ImageId": amis[("v2", OTHER)][0], "InstanceType": "t3.small"})
    ec2[OTHER].create_launch_template_version(LaunchTemplateName="webapp-qa",
                                              LaunchTemplateData={"ImageId": amis[("v1", OTHER)][0], "InstanceType": "t3.small"})
    boto3.client("autoscaling", OTHER).create_auto_scaling_group(
        AutoScalingGroupName="webapp-qa", MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{OTHER}a"],
        LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"})
    ec2[HOME].run_instances(ImageId=amis[("a1", HOME)][0], MinCount=1, MaxCount=1, InstanceType="t3.micro")
    # us-east-1: api a3 through a mixed instances policy on $Latest, api a4 through a launch configuration.
    autoscaling = boto3.client("autoscaling", HOME)
    ec2[HOME].create_launch_template(LaunchTemplateName="api-mixed", LaunchTemplateData={"ImageId": amis[("a3", HOME)][0]})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="api-mixed", MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{HOME}a"],
        MixedInstancesPolicy={"LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateName": "api-mixed", "Version": "$Latest"},
                                                 "Overrides": [{"InstanceType": "t3.small"}]}})
    autoscaling.create_launch_configuration(LaunchConfigurationName="api-old", ImageId=amis[("a4", HOME)][0], InstanceType="t3.small")
    autoscaling.create_auto_scaling_group(AutoScalingGroupName="api-old", MinSize=0, MaxSize=1, DesiredCapacity=0,
                                          AvailabilityZones=[f"{HOME}a"], LaunchConfigurationName="api-old")
    ssm = boto3.client("ssm", HOME)
    for version in ("v1", "v3", "v3", "v5"):  # qa: now v5, rollback target v3 (the previous distinct value); v1 is older history
        ssm.put_parameter(Name="/bakery/sample/qa/ami-id", Value=amis[(version, HOME)][0], Type="String", Overwrite=True)
    ssm.put_parameter(Name="/bakery/sample/qa/version", Value="20260101.005", Type="String", Overwrite=True)
    return proj, ec2, amis, unmanaged


def test_gc_keeps_every_ami_in_use_and_the_rollback_target_and_deletes_the_rest_with_snapshots(estate):
    proj, ec2, amis, unmanaged = estate
    catalog = open_catalog(proj / ".bakery")
    recorded = catalog.reserve_version("sample", "run", 1)
    catalog.complete_version("sample", recorded, image_ref=amis[("v1", HOME)][0], image_id=amis[("v1", HOME)][0], input_digest="sha256:x",
                             provenance={}, layers=[])

    dry = bake(proj, "gc", "--target", "aws", "--keep", "1", "--dry-run", "--json")
    assert dry.rc == 0, dry.stderr
    planned = {(e["image"], e["version"]) for e in dry.json["delete"]}
    assert planned == {("sample", "20260101.001"), ("sample", "20260101.004"), ("api", "20260101.002")}
    kept = {e["version"] if e["image"] == "sample" else "api:" + e["version"]: " | ".join(e["reasons"]) for e in dry.json["kept"]}
    assert "one of the newest 1" in kept["20260101.006"] and "one of the newest 1" in kept["api:20260101.005"]
    assert "qa runs it (/bakery/sample/qa/ami-id)" in kept["20260101.005"]
    assert "rollback target of qa" in kept["20260101.003"]
    assert "Auto Scaling group webapp-qa launches it (launch template webapp-qa version 1)" in kept["20260101.002"]
    assert "instance i-" in kept["api:20260101.001"]
    assert "Auto Scaling group api-mixed launches it (launch template api-mixed version 1)" in kept["api:20260101.003"]
    assert "Auto Scaling group api-old launches it (launch configuration api-old)" in kept["api:20260101.004"]
    assert all(image_state(ec2[region], ami) == "available" for (_, region), (ami, _) in amis.items())  # a dry run deletes nothing

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
    assert f"deleted sample:20260101.001: {amis[('v1', OTHER)][0]} in {OTHER} (1 snapshots), {amis[('v1', HOME)][0]} in {HOME} (1 snapshots)" \
        " (older than the newest 1 and in use nowhere)" in lines
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
    assert listed["releases"] == [{"image": "sample", "env": "qa", "region": HOME, "ami_id": amis[("v5", HOME)][0], "version": "20260101.005",
                                   "parameter": "/bakery/sample/qa/ami-id"}]
    text = bake(proj, "images", "--target", "aws")
    assert text.rc == 0 and any(line.startswith("sample") and "20260101.005" in line and line.endswith("qa") for line in text.stdout.splitlines())
