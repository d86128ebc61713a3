"""distribute against moto server: a tagged copy in the other region, shared with the accounts (AMIs and snapshots),
and a re-run changes nothing."""

from __future__ import annotations

import io

import boto3
import pytest

from bakery.aws import amis, tags
from tests.aws.ami_factory import version_ami, with_aws_settings
from tests.conftest import bake

pytestmark = pytest.mark.aws

HOME, OTHER = "us-east-1", "eu-west-1"
ACCOUNTS = ["111122223333", "444455556666"]
VERSION = "20260101.007"
KEYS = {HOME: "alias/bakery-ami",
        OTHER: "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"}


def shared_with(ec2, ami_id: str) -> tuple[set[str], dict[str, set[str]]]:
    """Who may launch the AMI, and who may create volumes from each of its snapshots."""
    image = ec2.describe_images(ImageIds=[ami_id])["Images"][0]
    launch = {p["UserId"]
              for p in ec2.describe_image_attribute(ImageId=ami_id, Attribute="launchPermission")["LaunchPermissions"]}
    volumes = {s: {p["UserId"] for p in ec2.describe_snapshot_attribute(
                       SnapshotId=s, Attribute="createVolumePermission")["CreateVolumePermissions"]}
               for s in amis.snapshot_ids(image)}
    return launch, volumes


def test_distribute_copies_tags_and_shares_then_a_rerun_is_a_no_op(aws, proj):
    with_aws_settings(proj, [HOME, OTHER], ACCOUNTS, KEYS)
    home, other = boto3.client("ec2", HOME), boto3.client("ec2", OTHER)
    source, _ = version_ami(home, "sample", VERSION, **{tags.INPUT_DIGEST: "sha256:abc"})

    first = bake(proj, "distribute", f"sample:{VERSION}", "--regions", OTHER, "--accounts", ",".join(ACCOUNTS),
                 "--json")
    assert first.rc == 0, first.stderr
    result = {r["region"]: r for r in first.json["regions"]}
    assert (first.json["changed"] and result[HOME]["ami_id"] == source and not result[HOME]["copied"]
            and result[OTHER]["copied"])
    copies = amis.find_amis(other, {tags.MANAGED: "true", tags.IMAGE: "sample", tags.VERSION: VERSION})
    assert [c["ImageId"] for c in copies] == [result[OTHER]["ami_id"]]
    copy_tags = tags.from_tag_list(copies[0]["Tags"])
    assert copy_tags[tags.INPUT_DIGEST] == "sha256:abc" and copy_tags["Name"] == f"sample-{VERSION}"
    copy_snapshots = amis.snapshot_ids(copies[0])
    assert copy_snapshots and all(
        tags.from_tag_list(s["Tags"]).get(tags.VERSION) == VERSION
        for s in other.describe_snapshots(SnapshotIds=copy_snapshots)["Snapshots"])
    for ec2, ami in ((home, source), (other, copies[0]["ImageId"])):
        launch, volumes = shared_with(ec2, ami)
        assert launch == set(ACCOUNTS) and volumes and all(users == set(ACCOUNTS) for users in volumes.values())

    again = bake(proj, "distribute", f"sample:{VERSION}", "--json")  # regions and accounts from bakery.yml this time
    assert again.rc == 0, again.stderr
    assert not again.json["changed"] and all(not r["changed"] for r in again.json["regions"])
    assert len(amis.find_amis(other, {tags.IMAGE: "sample"})) == 1


def test_a_copy_is_encrypted_with_the_destination_regions_key(aws, proj, monkeypatch):
    from bakery.aws import clients
    from bakery.aws import distribute as dist
    from bakery.config import Project
    from bakery.progress import Progress

    copies = []

    def recording_client(service, region=None, profile=None):
        made = clients.client(service, region, profile)
        made.meta.events.register("provide-client-params.ec2.CopyImage",
                                  lambda params, **_: copies.append((region, dict(params))))
        return made

    monkeypatch.setattr(dist, "client", recording_client)
    settings = Project(with_aws_settings(proj, [HOME, OTHER], ACCOUNTS, KEYS)).aws
    version_ami(boto3.client("ec2", HOME), "sample", VERSION)
    result = dist.distribute(settings, "sample", VERSION, [OTHER], ACCOUNTS, Progress(io.StringIO()))
    assert [r.region for r in result.regions if r.copied] == [OTHER]
    assert ([(region, params["Encrypted"], params["KmsKeyId"]) for region, params in copies]
            == [(OTHER, True, KEYS[OTHER])])


def test_sharing_without_a_customer_key_in_a_region_is_refused_before_anything_is_copied(aws, proj):
    with_aws_settings(proj, [HOME, OTHER], ACCOUNTS, {HOME: KEYS[HOME]})
    version_ami(boto3.client("ec2", HOME), "sample", VERSION)
    refused = bake(proj, "distribute", f"sample:{VERSION}")
    assert refused.rc == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert (f"aws.region_kms_key_ids.{OTHER} is not set: the AMI in {OTHER} would be encrypted with the default "
            "aws/ebs key") in refused.stderr
    assert not amis.find_amis(boto3.client("ec2", OTHER), {tags.IMAGE: "sample"})  # nothing copied


def test_distribute_refuses_bad_input_in_one_line(proj):
    bad_account = bake(proj, "distribute", f"sample:{VERSION}", "--accounts", "12345")
    assert bad_account.rc == 2 and bad_account.stderr.count("\n") == 1
    assert "--accounts: '12345' is not a 12-digit AWS account id" in bad_account.stderr
    no_version = bake(proj, "distribute", "sample")
    assert no_version.rc == 2 and "distribute needs IMAGE:VERSION" in no_version.stderr


def test_waiting_for_a_copy_rides_out_eventual_consistency_and_is_bounded(aws):
    from bakery.aws import clients
    from bakery.aws.distribute import wait_for_copies
    from bakery.errors import OperationError
    from bakery.progress import Progress
    from tests.aws.test_retries import FailFirst

    ec2 = clients.client("ec2", OTHER)
    ami, _ = version_ami(ec2, "sample", VERSION, OTHER)
    lagging = FailFirst("DescribeImages", "InvalidAMIID.NotFound", times=2, match="ImageId.1=").attach(ec2)
    lines, sleeps = io.StringIO(), []
    described = wait_for_copies({OTHER: ec2}, {OTHER: ami}, Progress(lines), timeout=60, sleep=sleeps.append)
    assert described[OTHER]["ImageId"] == ami and lagging.injected == 2 and sleeps == [1.0, 2.0]
    assert ([line.split(" after ")[0] for line in lines.getvalue().splitlines()]
            == [f"{OTHER}: {ami} not visible yet", f"{OTHER}: {ami} available"])

    FailFirst("DescribeImages", "InvalidAMIID.NotFound", times=100, match="ImageId.1=").attach(ec2)
    with pytest.raises(OperationError, match=f"copies still not available after 5 s: {OTHER} "
                                             f"\\({ami} not visible yet\\).*run distribute again"):
        wait_for_copies({OTHER: ec2}, {OTHER: ami}, Progress(io.StringIO()), timeout=5, sleep=lambda s: None)
