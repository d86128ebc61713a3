"""`verify --target aws` records (moto server): written once per run, the newest counts, only for exactly the AMI and
snapshots it names, and a copy distribute recorded is vouched for by its source's."""

from __future__ import annotations

import pytest

from bakery.aws import amis, clients, readback_record, verification_record
from bakery.errors import ConfigError, OperationError
from tests.aws.ami_factory import version_ami

pytestmark = pytest.mark.aws

REGION, OTHER = "us-east-1", "eu-west-1"
VERSION = "20261201.001"


def write(ssm, ami: str, snapshots: list[str], *, passed: bool = True, run_id: str = "verify-1",
          summary: str = "scan clean; vm passed", region: str = REGION, version: str = VERSION) -> str:
    return readback_record.write(ssm, image="webapp", version=version, region=region, ami=ami, snapshots=snapshots,
                                 disk_sha256="cd" * 32, passed=passed, report_sha256="ab" * 32, summary=summary,
                                 run_id=run_id, env="qa")


def test_a_record_is_written_once_per_run_and_the_newest_counts(aws, monkeypatch):
    ec2, ssm = clients.client("ec2", REGION), clients.client("ssm", REGION)
    ami, snapshots = version_ami(ec2, "webapp", VERSION)
    described = amis.describe_ami(ec2, ami)
    assert readback_record.verdict(ssm, described, REGION) == (None, "")

    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T10:00:00Z")
    name = write(ssm, ami, snapshots, passed=False, summary="secrets: 1 finding (root/.ssh/id_rsa)")
    assert name == f"/bakery/verifications/webapp/readback/{VERSION}/{REGION}/{ami}/verify-1"
    with pytest.raises(OperationError, match="already exists; records are written once"):
        write(ssm, ami, snapshots, passed=True)
    assert readback_record.verdict(ssm, described, REGION) == (False, "secrets: 1 finding (root/.ssh/id_rsa)")

    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T11:00:00Z")
    write(ssm, ami, snapshots, run_id="verify-2")
    assert readback_record.verdict(ssm, described, REGION) == (True, "scan clean; vm passed")
    newest = readback_record.newest(ssm, "webapp", VERSION, REGION, ami, snapshots)
    assert newest is not None and (newest["run_id"], newest["disk_sha256"], newest["env"]) == ("verify-2", "cd" * 32,
                                                                                                "qa")


def test_a_record_naming_other_snapshots_or_another_ami_does_not_count(aws, monkeypatch):
    ec2, ssm = clients.client("ec2", REGION), clients.client("ssm", REGION)
    ami, snapshots = version_ami(ec2, "webapp", VERSION)
    other, other_snapshots = version_ami(ec2, "webapp", VERSION)
    described = amis.describe_ami(ec2, ami)
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T10:00:00Z")
    write(ssm, ami, snapshots, passed=False, summary="vm failed")
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T11:00:00Z")
    write(ssm, ami, other_snapshots, run_id="verify-2")  # newer, passing, but for other bytes
    assert readback_record.verdict(ssm, described, REGION) == (False, "vm failed")
    # a passing record of another AMI (another path) vouches for nothing here
    write(ssm, other, other_snapshots, run_id="verify-3")
    assert readback_record.verdict(ssm, amis.describe_ami(ec2, other), REGION)[0] is True
    wrong = readback_record.records(ssm, "webapp", VERSION, REGION, ami)
    assert {readback_record.mismatch(r, "webapp", VERSION, REGION, ami, snapshots).endswith("names another snapshots")
            for r in wrong} == {True, False}


def test_every_page_is_read(aws, monkeypatch):
    """GetParametersByPath answers ten at a time: the newest record may be on any page."""
    ec2, ssm = clients.client("ec2", REGION), clients.client("ssm", REGION)
    ami, snapshots = version_ami(ec2, "webapp", VERSION)
    for n in range(12):
        monkeypatch.setattr(readback_record, "utc_now", lambda n=n: f"2026-12-01T10:00:{n:02d}Z")
        write(ssm, ami, snapshots, run_id=f"verify-{n:02d}", passed=n == 11, summary=f"run {n}")
    assert len(readback_record.records(ssm, "webapp", VERSION, REGION, ami)) == 12
    assert readback_record.verdict(ssm, amis.describe_ami(ec2, ami), REGION) == (True, "run 11")


def test_a_recorded_copy_is_vouched_for_by_its_source_and_an_unrecorded_one_is_not(aws):
    ec2, ssm, other_ec2 = clients.client("ec2", REGION), clients.client("ssm", REGION), clients.client("ec2", OTHER)
    source, snapshots = version_ami(ec2, "webapp", VERSION)
    verification_record.write_record(ssm, image="webapp", version=VERSION, passed=True, amis={REGION: source},
                                     snapshots={REGION: snapshots}, report_sha256="ab" * 32, summary="vm passed",
                                     run_id="bake-1")
    copy, _ = version_ami(other_ec2, "webapp", VERSION, region=OTHER)
    described = amis.describe_ami(other_ec2, copy)
    write(ssm, source, snapshots)  # the source passed verify --target aws
    assert readback_record.verdict(ssm, described, OTHER) == (None, "")  # merely tagged: no copy record
    verification_record.write_copy_record(ssm, source=verification_record.read_record(ssm, "webapp", VERSION),
                                          source_ami=source, source_region=REGION, copy=described, region=OTHER,
                                          run_id="distribute-1")
    assert readback_record.verdict(ssm, described, OTHER) == (
        True, f"scan clean; vm passed (on the source {source} in {REGION})")


def test_the_readback_level_is_no_version_and_names_are_checked(aws):
    with pytest.raises(ConfigError, match="version 'readback' is reserved for the records of verify --target aws"):
        verification_record.parameter_name("webapp", "readback")
    with pytest.raises(ConfigError, match="version 'copies' is reserved for the records of copies"):
        verification_record.parameter_name("webapp", "copies")
    with pytest.raises(ConfigError, match="run_id 'a/b' cannot be an SSM parameter name level"):
        readback_record.name("webapp", VERSION, REGION, "ami-0123", "a/b")
    ec2, ssm = clients.client("ec2", REGION), clients.client("ssm", REGION)
    ami, snapshots = version_ami(ec2, "webapp", VERSION)
    long = write(ssm, ami, snapshots, summary="x" * 10000)  # shortened under the standard tier's 4 KB
    [record] = readback_record.records(ssm, "webapp", VERSION, REGION, ami)
    assert record["parameter"] == long and len(record["summary"]) == verification_record.MAX_SUMMARY


def test_the_newest_record_is_the_one_ssm_stored_last_whatever_its_written_at_claims(aws, monkeypatch):
    """written_at is the writer's word: a record dated 2099 must not out-vote a failure SSM stored after it."""
    ec2, ssm = clients.client("ec2", REGION), clients.client("ssm", REGION)
    ami, snapshots = version_ami(ec2, "webapp", VERSION)
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2099-12-31T23:59:59Z")
    write(ssm, ami, snapshots, run_id="verify-9", summary="forged pass")
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T10:00:00Z")
    write(ssm, ami, snapshots, run_id="verify-1", passed=False, summary="vm failed")
    assert readback_record.verdict(ssm, amis.describe_ami(ec2, ami), REGION) == (False, "vm failed")
    stored = {r["run_id"]: r["last_modified"] for r in readback_record.records(ssm, "webapp", VERSION, REGION, ami)}
    assert stored["verify-1"] >= stored["verify-9"]  # moto, like SSM, stamps LastModifiedDate itself
