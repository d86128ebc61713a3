"""The verified disk becomes the AMI, and the AMI is read back and put through the same gate (moto on loopback).

Runs after tests/integration/test_vm_verify.py (file order), whose VM verification of the example image's disk the
disk builder reuses: what passed there is, byte for byte, what is published here. One more VM boot runs here: the
read-back disk's, under `verify --target aws`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from bakery.aws import disk_blocks, ebs_direct
from tests.conftest import BAKE, bake, free_port, init_repo, machine_lock
from tests.integration.conftest import record_bake_run

pytestmark = pytest.mark.integration

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def emulation(monkeypatch):
    monkeypatch.setenv("BAKERY_VM_ACCEL", "tcg")


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto server on a loopback port, and an environment whose boto3 clients (bake.py's too) go only there."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    quiet = tmp_path_factory.mktemp("aws")
    saved = dict(os.environ)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(quiet / "config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(quiet / "credentials")})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        os.environ.pop(name, None)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def ec2():
    return boto3.client("ec2", region_name=REGION)


def amis_of(version: str) -> list[dict]:
    return ec2().describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:version", "Values": [version]}])[
        "Images"]


def snapshots_of_run_tagged(version: str) -> list[dict]:
    return ec2().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:bakery:version", "Values": [version]}])["Snapshots"]


def local_disk(project: Path, version: str) -> dict:
    out = bake(project, "disk", f"webapp:{version}", "--json", timeout=900)
    assert out.rc == 0, out.stderr
    return out.json


def root_on(ami: str, snapshot: str) -> None:
    """Put the AMI's root device on `snapshot`, as EC2's RegisterImage does with the mapping it is given: moto 5.2.5's
    RegisterImage drops the mapping and makes a snapshot of its own, which its EBS direct API does not know. moto
    server runs in this process (ThreadedMotoServer), so the test sets what AWS would have."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.amis[ami].ebs_snapshot = backend.snapshots[snapshot]


PUBLISHED: dict[str, str] = {}  # what the first test published: the AMI and the snapshot the EBS direct API wrote


def test_kill_9_mid_upload_registers_nothing_and_the_next_build_publishes_the_verified_disk(
        example_project, webapp_image, moto):
    version = webapp_image["version"]
    disk = local_disk(example_project, version)
    with machine_lock("leftovers", shared=True):  # a build: it removes dead bakes' build containers as it starts
        proc = subprocess.Popen([sys.executable, str(BAKE), "--project", str(example_project), "build", "webapp",
                                 "--target", "aws", "--builder", "disk"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 1800
        while not snapshots_of_run_tagged(version):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    [partial] = snapshots_of_run_tagged(version)
    sent = boto3.client("ebs", region_name=REGION).list_snapshot_blocks(SnapshotId=partial["SnapshotId"])["Blocks"]
    assert len(sent) < len(disk_blocks.block_map(Path(disk["path"])).digests)  # killed mid-upload
    assert amis_of(version) == []  # never a registered AMI over a partial snapshot

    out = bake(example_project, "build", "webapp", "--target", "aws", "--builder", "disk", "--json", timeout=1800)
    assert out.rc == 0, out.stderr[-3000:]
    assert partial["SnapshotId"] in out.stderr  # the dead run's snapshot is named as it goes
    [ami] = amis_of(version)
    tags = {t["Key"]: t["Value"] for t in ami["Tags"]}
    assert tags["bakery:disk-sha256"] == disk["sha256"] and tags["bakery:managed"] == "true"
    assert ami["ImageId"] == out.json["image_id"]
    left = {s["SnapshotId"] for s in snapshots_of_run_tagged(version)}
    assert partial["SnapshotId"] not in left
    moto_own = ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    [written] = left - {moto_own}
    root_on(ami["ImageId"], written)
    PUBLISHED.update(ami=ami["ImageId"], snapshot=written)

    again = bake(example_project, "build", "webapp", "--target", "aws", "--builder", "disk", "--json")
    assert again.rc == 0 and again.json["reused"] is True and again.json["image_id"] == ami["ImageId"]


def test_verify_target_aws_reads_the_ami_back_as_the_same_disk_and_passes(example_project, webapp_image, moto):
    version = webapp_image["version"]
    disk = local_disk(example_project, version)
    out = bake(example_project, "verify", f"webapp:{version}", "--target", "aws", "--json", timeout=2400)
    assert out.rc == 0, out.stderr[-3000:] + out.stdout[-3000:]
    checks = {c["name"]: c for c in out.json["checks"]}
    assert checks["secrets"]["passed"] and checks["vm-boot"]["passed"] and checks["testinfra"]["passed"]
    assert out.json["reports"]["disk_sha256"] == disk["sha256"]  # the AMI holds exactly the verified bytes
    ssm = boto3.client("ssm", region_name=REGION)
    names = [p["Name"] for p in ssm.get_parameters_by_path(Path="/bakery/verifications/webapp",
                                                           Recursive=True)["Parameters"]]
    assert any(f"/readback/{version}/" in name for name in names), names


def test_an_app_only_change_publishes_at_most_5_percent_of_the_cold_bytes(example_project, webapp_image, moto,
                                                                           tmp_path):
    version = webapp_image["version"]
    cold_disk = Path(local_disk(example_project, version)["path"])
    changed = tmp_path / "changed"
    shutil.copytree(example_project, changed, ignore=shutil.ignore_patterns(".git", "runs", "disks", "envs"))
    init_file = changed / "app" / "webapp" / "__init__.py"
    init_file.write_text(init_file.read_text().replace('__version__ = "1.0.0"', '__version__ = "1.0.1"'))
    init_repo(changed, "The example project with a new app version")
    assert bake(changed, "build-app").rc == 0
    built = bake(changed, "build", "webapp", "--json", timeout=1200)
    assert built.rc == 0, built.stderr
    record_bake_run(built.json["run_id"])
    assert [layer["cached"] for layer in built.json["layers"]][:-1] == [True] * (len(built.json["layers"]) - 1)
    new_disk = Path(local_disk(changed, built.json["version"])["path"])

    cold_blocks, new_blocks = disk_blocks.block_map(cold_disk), disk_blocks.block_map(new_disk)
    client = boto3.client("ebs", region_name=REGION)
    parent = PUBLISHED.get("snapshot") or ebs_direct.publish(  # the first test's, or published here when run alone
        client, ec2(), cold_disk, cold_blocks, tags={"bakery:managed": "true"}, kms_key="", description="cold",
        client_token=f"c-{time.time_ns()}").snapshot_id
    published = ebs_direct.publish(client, ec2(), new_disk, new_blocks, tags={"bakery:managed": "true"},
                                   kms_key="", description="app-only change", client_token=f"t-{time.time_ns()}",
                                   parent_snapshot=parent, parent_blocks=cold_blocks)
    cold_bytes = len(cold_blocks.digests) * disk_blocks.BLOCK_SIZE
    assert published.parent == parent
    assert published.bytes_sent <= 0.05 * cold_bytes, (
        f"{published.blocks_sent} of {len(cold_blocks.digests)} blocks moved "
        f"({published.bytes_sent / cold_bytes:.1%} of the cold publish's bytes)")
