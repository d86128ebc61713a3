"""`bake.py verify IMAGE:VERSION --target aws` against moto server: a small real GPT disk published through the EBS
direct APIs and registered as an AMI is read back, scanned without mounting, and refused naming the planted key's
path before any VM boots; its outcome is recorded in the catalog (kind aws) and, write-once, in SSM.

No VM boots here (the scan fails first); the full boot of the example image's AMI is the integration test
tests/integration/test_vm_verify_aws.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from bakery.aws import disk_blocks, ebs_direct, readback_record, tags
from bakery.catalog import open_catalog
from bakery.config import Project
from bakery.verify import aws_readback
from bakery.verify.disk_scan import ESP_TYPE
from tests.conftest import bake
from tests.unit.test_disk_scan import LINUX, PEM, ext4, gpt_disk, vfat

pytestmark = pytest.mark.aws

REGION = "us-east-1"
VERSION = "20260101.007"
KEY_PATH = "/etc/ssl/private/deploy.pem"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def leaky_disk(tmp: Path) -> Path:
    """A GPT disk (ESP + ext4 root) whose root holds a private key; a few MiB, some blocks all zeros."""
    return gpt_disk(tmp, [("esp", ESP_TYPE, vfat(tmp, {"EFI/BOOT/BOOTX64.EFI": "boot"})),
                          ("root", LINUX, ext4(tmp, "root", {KEY_PATH.lstrip("/"): PEM, "etc/hostname": "web\n"}))])


def publish_ami(disk: Path, image: str = "sample", version: str = VERSION, **extra: str) -> tuple[str, str]:
    """The disk as a snapshot (EBS direct APIs) and a managed AMI over it; returns (ami, snapshot)."""
    ebs, ec2 = boto3.client("ebs", REGION), boto3.client("ec2", REGION)
    values = {tags.MANAGED: "true", tags.IMAGE: image, tags.VERSION: version, **extra}
    published = ebs_direct.publish(ebs, ec2, disk, disk_blocks.block_map(disk), tags=values, kms_key="",
                                   description="test disk", client_token=f"test-{time.time_ns()}")
    ami = ec2.register_image(Name=f"{image}-{version}", Architecture="x86_64", RootDeviceName="/dev/xvda",
                             BootMode="uefi", VirtualizationType="hvm",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                   "Ebs": {"SnapshotId": published.snapshot_id,
                                                           "VolumeType": "gp3"}}])["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=tags.as_tag_list(values))
    root_on(ami, published.snapshot_id)
    return ami, published.snapshot_id


def root_on(ami: str, snapshot: str) -> None:
    """Put the AMI's root device on `snapshot`, as EC2's RegisterImage does with the mapping it is given: moto 5.2.5's
    RegisterImage drops the mapping and makes a snapshot of its own, one its EBS direct API does not know. moto
    server runs in this process (ThreadedMotoServer), so the test sets what AWS would have."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.amis[ami].ebs_snapshot = backend.snapshots[snapshot]


def local_disk(proj: Path, disk: Path) -> Path:
    """`disk` recorded in the project's catalog as the raw disk of sample:VERSION (adopted, through its API)."""
    target = proj / ".bakery" / "disks" / "sample" / f"{VERSION}.raw"
    target.parent.mkdir(parents=True)
    subprocess.run(["cp", "--sparse=always", str(disk), str(target)], check=True)
    catalog = open_catalog(proj / ".bakery")
    try:
        catalog.adopt_version("sample", VERSION, run_id="test", pid=os.getpid(), image_ref="test", image_id="test",
                              input_digest="", provenance={})
        catalog.record_disk("sample", VERSION, disk_format="raw", path=f"disks/sample/{VERSION}.raw",
                            sha256=sha256(target), size=target.stat().st_size, allocated=0, run_id="test",
                            details={"partitions": []})
    finally:
        catalog.close()
    return target


def readbacks(proj: Path) -> list[Path]:
    return sorted((proj / ".bakery" / "disks").glob(".readback-*")) if (proj / ".bakery" / "disks").is_dir() else []


def test_a_planted_key_fails_the_verification_naming_its_path_before_any_boot(aws, proj, tmp_path):
    disk = leaky_disk(tmp_path)
    ami, snapshot = publish_ami(disk)

    out = bake(proj, "verify", f"sample:{VERSION}", "--target", "aws", "--keep-disk", "--json")

    assert out.rc == 1, out.stderr
    assert KEY_PATH in out.stderr.splitlines()[-1]  # the one-line failure names the path
    result = out.json
    checks = {c["name"]: c for c in result["checks"]}
    assert not checks["secrets"]["passed"] and KEY_PATH in checks["secrets"]["message"]
    assert "partition 2 'root' (/)" in checks["secrets"]["message"]
    assert checks["vm-boot"]["skipped"] and "vm-online" not in os.listdir(proj / ".bakery" / "runs" / result["run_id"])
    reports = result["reports"]
    assert (reports["ami"], reports["snapshot"], reports["region"]) == (ami, snapshot, REGION)

    [kept] = readbacks(proj)  # --keep-disk: the read-back disk stays, marked kept (gc leaves it)
    readback = kept / f"{ami}.raw"
    assert reports["disk_sha256"] == sha256(readback)
    size = disk.stat().st_size  # no local disk: the snapshot's whole GiB, the published bytes then zeros
    assert readback.stat().st_size == 1024 ** 3
    assert aws_readback.prefix_digest(readback, size) == (sha256(disk), True)
    assert aws_readback.stale_readbacks(Project(proj)) == []

    catalog = open_catalog(proj / ".bakery")
    [row] = catalog.verifications("sample", VERSION)
    catalog.close()
    assert (row["kind"], row["passed"], row["reports"]["ami"]) == ("aws", False, ami)
    ssm = boto3.client("ssm", REGION)
    [record] = readback_record.records(ssm, "sample", VERSION, REGION, ami)
    assert record["passed"] is False and record["snapshots"] == [snapshot]
    assert record["disk_sha256"] == reports["disk_sha256"] and record["run_id"] == result["run_id"]


def test_an_ami_of_the_local_disk_reads_back_as_that_disk_byte_for_byte(aws, proj, tmp_path):
    disk = local_disk(proj, leaky_disk(tmp_path))
    ami, _ = publish_ami(disk, **{tags.DISK_SHA256: sha256(disk)})

    out = bake(proj, "verify", f"sample:{VERSION}", "--target", "aws", "--json")

    assert out.rc == 1, out.stderr
    checks = {c["name"]: c for c in out.json["checks"]}
    assert out.json["reports"]["disk_sha256"] == sha256(disk)  # read back at the local disk's own size
    assert out.json["reports"]["matches_local_disk"] == "yes" and checks["ami-disk"]["passed"]
    assert "byte for byte" in checks["ami-disk"]["output"]
    assert readbacks(proj) == []  # the read-back disk is removed at the end


def test_an_ami_claiming_another_disk_fails_the_ami_disk_check(aws, proj, tmp_path):
    disk = leaky_disk(tmp_path)
    publish_ami(disk, **{tags.DISK_SHA256: "0" * 64})

    out = bake(proj, "verify", f"sample:{VERSION}", "--target", "aws", "--json")

    checks = {c["name"]: c for c in out.json["checks"]}
    assert out.rc == 1 and not checks["ami-disk"]["passed"]
    assert f"tagged {tags.DISK_SHA256}={'0' * 64}" in checks["ami-disk"]["message"]


def test_a_version_with_no_ami_in_the_region_is_one_line_naming_the_region(aws, proj):
    out = bake(proj, "verify", "sample:20260101.099", "--target", "aws")

    assert out.rc == 2 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert "no available AMI of sample:20260101.099" in line and REGION in line
    assert "./bake.py images sample --target aws" in line
    assert not (proj / ".bakery" / "runs").exists() or not any((proj / ".bakery" / "runs").iterdir())


def test_the_environments_region_is_where_the_ami_is_looked_for(aws, proj, tmp_path):
    publish_ami(leaky_disk(tmp_path))
    deploy = proj / "inventories" / "cloud" / "group_vars" / "all" / "deploy.yml"
    deploy.parent.mkdir(parents=True)
    deploy.write_text("bakery_deploy: {target: aws, image: sample, aws: {auto_scaling_group: g, launch_template: t, "
                      "region: eu-west-1}}\n")

    out = bake(proj, "verify", f"sample:{VERSION}", "--target", "aws", "--env", "cloud")

    assert out.rc == 2 and "in eu-west-1" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_local_environment_or_local_only_options_are_refused_with_exit_2(aws, proj):
    deploy = proj / "inventories" / "qa" / "group_vars" / "all" / "deploy.yml"
    deploy.parent.mkdir(parents=True)
    deploy.write_text("bakery_deploy: {target: local, image: sample, lb_port: 18080}\n")

    local_env = bake(proj, "verify", f"sample:{VERSION}", "--target", "aws", "--env", "qa")
    region_alone = bake(proj, "verify", f"sample:{VERSION}", "--region", "us-east-1")
    unknown = bake(proj, "verify", f"nosuch:{VERSION}", "--target", "aws")

    assert local_env.rc == 2 and "environment 'qa' is a local environment" in local_env.stderr
    assert region_alone.rc == 2 and "--region applies to verify --target aws only" in region_alone.stderr
    assert unknown.rc == 2 and "unknown image 'nosuch'" in unknown.stderr


def test_the_read_back_directory_of_a_killed_run_is_a_leftover_and_a_kept_one_is_not(proj):
    project = Project(proj)
    dead, live, kept = (aws_readback.readback_dir(project, f"run-{n}") for n in ("dead", "live", "kept"))
    for path, pid in ((dead, 2 ** 22 + 7), (live, os.getppid()), (kept, 0)):
        path.mkdir(parents=True)
        if pid:
            (path / "pid").write_text(str(pid))
    (kept / aws_readback.KEPT).write_text("run-kept")

    assert aws_readback.stale_readbacks(project) == [dead]  # gc lists it with the disk leftovers


def test_the_pipeline_reuses_a_passing_read_back_and_runs_one_where_none_passed(aws, proj, tmp_path):
    from bakery.catalog import open_catalog as catalog_of
    from bakery.errors import OperationError
    from bakery.progress import Progress

    ami, snapshot = publish_ami(leaky_disk(tmp_path))
    deploy = proj / "inventories" / "cloud" / "group_vars" / "all" / "deploy.yml"
    deploy.parent.mkdir(parents=True)
    deploy.write_text("bakery_deploy: {target: aws, image: sample, require_verified: [aws], "
                      "aws: {auto_scaling_group: g, launch_template: t}}\n")
    project, catalog = Project(proj), catalog_of(proj / ".bakery")
    try:
        with pytest.raises(OperationError, match=f"verify --target aws of sample:{VERSION} \\({ami}\\) failed"):
            aws_readback.ensure_ami_verified(project, catalog, Progress(), "sample", VERSION, "cloud")
        [failed] = readback_record.records(boto3.client("ssm", REGION), "sample", VERSION, REGION, ami)
        assert failed["passed"] is False  # the read-back ran (and found the key)
        readback_record.write(boto3.client("ssm", REGION), image="sample", version=VERSION, region=REGION, ami=ami,
                              snapshots=[snapshot], disk_sha256="0" * 64, passed=True, report_sha256="1" * 64,
                              summary="12 checks passed", run_id="20991231T000000Z-verify-aws-000001", env="cloud")
        said = aws_readback.ensure_ami_verified(project, catalog, Progress(), "sample", VERSION, "cloud")
    finally:
        catalog.close()
    assert said == f"{ami} passed verify --target aws (12 checks passed); not repeated"
    assert len(catalog_of(proj / ".bakery").verifications("sample", VERSION)) == 1  # not run again


def test_an_ami_with_a_second_volume_cannot_pass_since_only_the_root_is_read_back(aws):
    """moto's RegisterImage keeps no mapping, so EC2's answer for such an AMI comes from botocore's Stubber."""
    from botocore.stub import Stubber

    from bakery.aws import clients
    from bakery.errors import OperationError

    ec2 = clients.client("ec2", REGION)
    mappings = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-0root"}},
                {"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": "snap-0data"}}]
    image = {"ImageId": "ami-0two", "State": "available", "CreationDate": "2026-12-03T00:00:00.000Z",
             "RootDeviceName": "/dev/xvda", "BlockDeviceMappings": mappings,
             "Tags": tags.as_tag_list({tags.MANAGED: "true", tags.IMAGE: "sample", tags.VERSION: VERSION})}
    with Stubber(ec2) as stub:
        stub.add_response("describe_images", {"Images": [image]})
        with pytest.raises(OperationError, match=r"ami-0two .* /dev/sdf \(snap-0data\); .*root volume only"):
            aws_readback.find_ami(ec2, "sample", VERSION, REGION)
