"""AMI helpers against moto server: find by tags, wait out eventual consistency, deregister with snapshots, base AMI."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from bakery.aws import amis, clients, tags
from bakery.errors import ConfigError, OperationError
from tests.aws.test_retries import FailFirst

pytestmark = pytest.mark.aws


def register_ami(ec2, name: str, ami_tags: dict[str, str]) -> str:
    """An AMI in moto with these tags (moto ignores TagSpecifications on register_image, so tag afterwards)."""
    volume = ec2.create_volume(Size=8, AvailabilityZone="us-east-1a")
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
    ami = ec2.register_image(
        Name=name, RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}])["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=tags.as_tag_list(ami_tags))
    return ami


class Sleeps(list):
    """Records the delays asked for instead of sleeping them (the backoff schedule is what is under test)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_find_amis_matches_every_tag_given(aws):
    ec2 = clients.client("ec2")
    wanted = register_ami(ec2, "webapp-1", {tags.MANAGED: "true", tags.IMAGE: "webapp", tags.INPUT_DIGEST: "sha256:aa"})
    register_ami(ec2, "webapp-2", {tags.MANAGED: "true", tags.IMAGE: "webapp", tags.INPUT_DIGEST: "sha256:bb"})
    register_ami(ec2, "other-1", {tags.MANAGED: "true", tags.IMAGE: "other", tags.INPUT_DIGEST: "sha256:aa"})
    found = amis.find_amis(ec2, {tags.MANAGED: "true", tags.IMAGE: "webapp", tags.INPUT_DIGEST: "sha256:aa"})
    assert [image["ImageId"] for image in found] == [wanted]
    assert len(amis.find_amis(ec2, {tags.IMAGE: "webapp"})) == 2


def test_wait_until_visible_rides_out_not_found_answers(aws):
    ec2 = clients.client("ec2")
    ami = register_ami(ec2, "webapp-3", {tags.IMAGE: "webapp"})
    lagging = FailFirst("DescribeImages", "InvalidAMIID.NotFound", times=2,
                        message=f"The image id '[{ami}]' does not exist").attach(ec2)
    sleeps = Sleeps()
    image = amis.wait_until_visible(ec2, ami, sleep=sleeps)
    assert image["ImageId"] == ami and image["State"] == "available"
    assert lagging.injected == 2 and lagging.passed == 1
    assert sleeps == [1.0, 2.0]  # backoff between looks, no error surfaced


def test_wait_until_visible_gives_up_with_one_line(aws):
    ec2 = clients.client("ec2")
    sleeps = Sleeps()
    with pytest.raises(OperationError, match=r"AMI ami-0123456789abcdef0 is still not visible after 10 s"):
        amis.wait_until_visible(ec2, "ami-0123456789abcdef0", timeout=10, sleep=sleeps)
    assert sleeps == [1.0, 2.0, 4.0, 8.0]  # bounded: the next delay would pass the deadline


def test_deregister_removes_the_ami_and_its_snapshots(aws):
    ec2 = clients.client("ec2")
    ami = register_ami(ec2, "webapp-4", {tags.IMAGE: "webapp"})
    snapshots = amis.snapshot_ids(amis.describe_ami(ec2, ami))
    assert snapshots
    assert amis.deregister_with_snapshots(ec2, ami) == snapshots
    assert amis.describe_ami(ec2, ami) is None
    with pytest.raises(ClientError, match="InvalidSnapshot.NotFound"):
        ec2.describe_snapshots(SnapshotIds=snapshots)
    assert amis.deregister_with_snapshots(ec2, ami) == []  # twice is fine: cleanup paths may overlap


def test_base_ami_comes_from_the_ssm_parameter_unless_fixed(aws):
    ssm = clients.client("ssm")
    ssm.put_parameter(Name="/test/debian/12/amd64", Value="ami-0abc1234def567890", Type="String")
    assert amis.resolve_base_ami(ssm, "/test/debian/12/amd64") == "ami-0abc1234def567890"
    assert amis.resolve_base_ami(ssm, "/test/debian/12/amd64", fixed="ami-0fff1234def567890") == "ami-0fff1234def567890"
    with pytest.raises(ConfigError, match="aws.base_ami_parameter '/test/missing' does not exist"):
        amis.resolve_base_ami(ssm, "/test/missing")


def test_root_device_is_the_base_amis_and_an_unknown_base_is_one_line(aws):
    ec2 = clients.client("ec2")
    volume = ec2.create_volume(Size=8, AvailabilityZone="us-east-1a")
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
    ami = ec2.register_image(
        Name="debian-sda1", RootDeviceName="/dev/sda1", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot}}])["ImageId"]
    assert amis.root_device(ec2, ami) == "/dev/sda1"
    with pytest.raises(ConfigError, match="base AMI ami-0123456789abcdef0 is not visible in this region"):
        amis.root_device(ec2, "ami-0123456789abcdef0")
