"""Adopting a version baked elsewhere from its AMI's tags (moto server): its catalog row and its build's checks.

The verification comes from the version's write-once SSM record, never from
the bakery:verified tag (anyone allowed to tag could set it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bakery.aws import adopt, amis, clients, tags, verification_record
from bakery.catalog import open_catalog
from bakery.errors import ConfigError, OperationError
from bakery.verify import gate
from tests.aws.test_amis import register_ami
from tests.iam_evaluator import evaluate

pytestmark = pytest.mark.aws

REGION = "us-east-1"


def version_tags(version: str, **extra: str) -> dict[str, str]:
    return {tags.MANAGED: "true", tags.IMAGE: "webapp", tags.VERSION: version, tags.INPUT_DIGEST: "sha256:aa",
            tags.GIT_COMMIT: "0123456789ab", **extra}


def write_matching_record(ec2, ami: str, version: str, *, passed: bool = True, summary: str = "") -> str:
    """The record the builder writes for `ami`: its id and its snapshots in REGION."""
    snapshots = amis.snapshot_ids(amis.describe_ami(ec2, ami))
    return verification_record.write_record(
        clients.client("ssm", REGION), image="webapp", version=version, passed=passed, amis={REGION: ami},
        snapshots={REGION: snapshots}, report_sha256="ab" * 32, summary=summary, run_id="bake-1")


def test_adoption_records_the_version_and_its_passed_verification_once(aws, tmp_path):
    ec2 = clients.client("ec2", REGION)
    ami = register_ami(ec2, "webapp-20261101.001-x", version_tags("20261101.001", **{
        tags.VERIFIED: "passed", tags.VERIFICATION: "testinfra on the build instance: 12 passed, 0 failed, 0 skipped"}))
    write_matching_record(ec2, ami, "20261101.001",
                          summary="testinfra on the build instance: 12 passed, 0 failed, 0 skipped")
    catalog = open_catalog(tmp_path / ".bakery")  # a fresh CI container: knows nothing
    with pytest.raises(OperationError, match="has no verification"):
        gate.require_verified(catalog, "webapp", "20261101.001", required=True, force=False, env="prod")

    row = adopt.adopt_version(catalog, ec2, "webapp", "20261101.001", REGION, "run-1")
    assert row is not None and (row["status"], row["image_ref"], row["input_digest"]) == ("ready", ami, "sha256:aa")
    assert row["provenance"]["amis"] == {REGION: ami} and row["git_commit"] == "0123456789ab"
    [verification] = catalog.verifications("webapp", "20261101.001")
    assert verification["passed"] and verification["env"] is None and verification["reports"] == {
        "ami": ami, "record": "/bakery/verifications/webapp/20261101.001", "report_sha256": "ab" * 32}
    assert verification["summary"].endswith("12 passed, 0 failed, 0 skipped")
    assert gate.require_verified(catalog, "webapp", "20261101.001", required=True, force=False, env="prod") is False

    again = adopt.adopt_version(catalog, ec2, "webapp", "20261101.001", REGION, "run-2")
    assert again is not None and again["run_id"] == "run-1"
    assert adopt.adopt_ami(
        catalog, ec2.describe_images(ImageIds=[ami])["Images"][0], REGION, "run-3")["run_id"] == "run-1"
    assert len(catalog.verifications("webapp", "20261101.001")) == 1  # idempotent: one adoption, one verification


def test_adoption_keeps_a_failed_result_failed_and_an_untested_one_unverified(aws, tmp_path):
    ec2 = clients.client("ec2", REGION)
    failed = register_ami(ec2, "webapp-failed",
                          version_tags("20261101.002", **{tags.VERIFIED: "failed", tags.VERIFICATION: "1 failed"}))
    write_matching_record(ec2, failed, "20261101.002", passed=False, summary="1 failed")
    register_ami(ec2, "webapp-untested", version_tags("20261101.003"))
    catalog = open_catalog(tmp_path / ".bakery")
    assert adopt.adopt_version(catalog, ec2, "webapp", "20261101.002", REGION, "run-1") is not None
    [verification] = catalog.verifications("webapp", "20261101.002")
    assert not verification["passed"] and verification["summary"] == "1 failed"
    with pytest.raises(OperationError, match=r"failed its last verification \(1 failed\)"):
        gate.require_verified(catalog, "webapp", "20261101.002", required=True, force=False, env="prod")

    assert adopt.adopt_version(catalog, ec2, "webapp", "20261101.003", REGION, "run-1")["status"] == "ready"
    assert catalog.verifications("webapp", "20261101.003") == []  # nothing claimed that no record says


def test_adoption_finds_nothing_for_unknown_foreign_or_unavailable_amis(aws, tmp_path):
    ec2 = clients.client("ec2", REGION)
    register_ami(ec2, "not-managed", {tags.IMAGE: "webapp", tags.VERSION: "20261101.004"})  # not bakery's
    ami = register_ami(ec2, "webapp-gone", version_tags("20261101.005"))
    ec2.deregister_image(ImageId=ami)
    catalog = open_catalog(tmp_path / ".bakery")
    for version in ("20261101.004", "20261101.005", "20261101.999"):
        assert adopt.adopt_version(catalog, ec2, "webapp", version, REGION, "run-1") is None
    assert catalog.versions("webapp", status=None) == []


def test_a_tag_edit_alone_does_not_pass_the_gate(aws, tmp_path, caplog):
    ec2 = clients.client("ec2", REGION)
    ami = register_ami(ec2, "webapp-untested", version_tags("20261101.006"))
    ec2.create_tags(Resources=[ami], Tags=tags.as_tag_list({tags.VERIFIED: "passed", tags.VERIFICATION: "trust me"}))
    catalog = open_catalog(tmp_path / ".bakery")
    with caplog.at_level(logging.WARNING, logger="bakery.aws.adopt"):
        assert adopt.adopt_version(catalog, ec2, "webapp", "20261101.006", REGION, "run-1")["status"] == "ready"
    assert catalog.verifications("webapp", "20261101.006") == []
    with pytest.raises(OperationError, match="has no verification"):
        gate.require_verified(catalog, "webapp", "20261101.006", required=True, force=False, env="prod")
    assert "adopted without a passing verification: no verification record " \
           "/bakery/verifications/webapp/20261101.006" in caplog.text


def test_a_record_for_other_snapshots_or_another_ami_does_not_pass_the_gate(aws, tmp_path, caplog):
    ec2 = clients.client("ec2", REGION)
    ssm = clients.client("ssm", REGION)
    ami = register_ami(ec2, "webapp-swapped", version_tags("20261101.007", **{tags.VERIFIED: "passed"}))
    verification_record.write_record(ssm, image="webapp", version="20261101.007", passed=True, amis={REGION: ami},
                                     snapshots={REGION: ["snap-0123456789abcdef0"]}, report_sha256="ab" * 32,
                                     summary="12 passed", run_id="bake-1")
    other = register_ami(ec2, "webapp-other", version_tags("20261101.008", **{tags.VERIFIED: "passed"}))
    write_matching_record(ec2, ami, "20261101.008")  # the record names `ami`, not `other`
    catalog = open_catalog(tmp_path / ".bakery")
    with caplog.at_level(logging.WARNING, logger="bakery.aws.adopt"):
        adopt.adopt_version(catalog, ec2, "webapp", "20261101.007", REGION, "run-1")
        adopt.adopt_version(catalog, ec2, "webapp", "20261101.008", REGION, "run-1")
    for version in ("20261101.007", "20261101.008"):
        assert catalog.verifications("webapp", version) == []
        with pytest.raises(OperationError, match="has no verification"):
            gate.require_verified(catalog, "webapp", version, required=True, force=False, env="prod")
    assert "snapshots" in caplog.text and "are not the record's ['snap-0123456789abcdef0']" in caplog.text
    assert f"the record names no AMI {other} in {REGION}" in caplog.text


def test_a_version_adopted_before_its_record_existed_is_verified_once_the_record_is_written(aws, tmp_path):
    # Packer's home AMI is tagged while bake.py copies it to the other regions; the record is written after the
    # copies: a deploy in between adopts the version with no verification. Each later adoption reads the record
    # again (one GetParameter) until the version has a verification; then it reads nothing.
    ec2, ssm = clients.client("ec2", REGION), clients.client("ssm", REGION)
    reads: list[str] = []
    ssm.meta.events.register("provide-client-params.ssm.GetParameter", lambda params, **_: reads.append(params["Name"]))
    version = "20261101.015"
    ami = register_ami(ec2, "webapp-early", version_tags(version))
    catalog = open_catalog(tmp_path / ".bakery")
    assert adopt.adopt_version(catalog, ec2, "webapp", version, REGION, "deploy-1", ssm)["run_id"] == "deploy-1"
    assert adopt.adopt_version(catalog, ec2, "webapp", version, REGION, "deploy-2", ssm) is not None
    assert catalog.verifications("webapp", version) == [] and len(reads) == 2  # one read per adoption

    write_matching_record(ec2, ami, version, summary="12 passed")
    reads.clear()
    assert adopt.adopt_version(catalog, ec2, "webapp", version, REGION, "deploy-3", ssm)["run_id"] == "deploy-1"
    [verification] = catalog.verifications("webapp", version)
    assert (verification["passed"], verification["summary"], verification["run_id"]) == (True, "12 passed", "deploy-3")
    assert reads == [f"/bakery/verifications/webapp/{version}"]
    gate.require_verified(catalog, "webapp", version, required=True, force=False, env="prod")

    reads.clear()
    adopt.adopt_version(catalog, ec2, "webapp", version, REGION, "deploy-4", ssm)
    assert reads == [] and len(catalog.verifications("webapp", version)) == 1


def test_a_record_is_written_once_and_read_back(aws):
    ssm = clients.client("ssm", REGION)
    args = dict(image="webapp", version="20261101.009", amis={REGION: "ami-0123456789abcdef0"},
                snapshots={REGION: ["snap-0b", "snap-0a"]}, report_sha256="cd" * 32, summary="3 passed",
                run_id="bake-2")
    assert verification_record.write_record(ssm, passed=True, **args) == "/bakery/verifications/webapp/20261101.009"
    refused = r"^a verification record for webapp:20261101.009 already exists \(/bakery/verifications/webapp/"
    with pytest.raises(OperationError, match=refused + r"20261101.009\); records are written once"):
        verification_record.write_record(ssm, passed=False, **args)
    record = verification_record.read_record(ssm, "webapp", "20261101.009")
    assert record is not None and record["passed"] is True and record["snapshots"] == {REGION: ["snap-0a", "snap-0b"]}
    assert {"image", "version", "passed", "amis", "snapshots", "report_sha256", "summary", "run_id",
            "written_at"} <= set(record)
    assert verification_record.read_record(ssm, "webapp", "20261101.010") is None


def test_a_version_with_a_record_but_no_ami_left_is_still_taken(aws):
    """The builders never hand out a version again once its record exists (a second write would be refused only after
    the whole build), nor while an AMI carries it."""
    ec2, ssm = clients.client("ec2", REGION), clients.client("ssm", REGION)
    assert not verification_record.version_taken(ec2, ssm, "webapp", "20261101.009")
    verification_record.write_record(ssm, image="webapp", version="20261101.009", passed=True,
                                     amis={REGION: "ami-0123456789abcdef0"}, snapshots={REGION: ["snap-0a"]},
                                     report_sha256="cd" * 32, summary="", run_id="bake-2")
    assert verification_record.version_taken(ec2, ssm, "webapp", "20261101.009")
    register_ami(ec2, "bakery-webapp-20261101.010", version_tags("20261101.010"))
    assert verification_record.version_taken(ec2, ssm, "webapp", "20261101.010")
    assert not verification_record.version_taken(ec2, ssm, "webapp", "20261101.011")


def test_record_names_and_size_stay_within_ssm_rules(aws):
    ssm = clients.client("ssm", REGION)
    for image, version in (("web app", "1"), ("webapp", "1/2"), ("webapp", "")):
        with pytest.raises(ConfigError, match="cannot be an SSM parameter name level"):
            verification_record.write_record(ssm, image=image, version=version, passed=True, amis={},
                                             snapshots={}, report_sha256="", summary="", run_id="r")
    long_summary = "x" * 5000  # shortened, not refused: the record still fits the standard tier
    verification_record.write_record(ssm, image="webapp", version="20261101.011", passed=True,
                                     amis={REGION: "ami-0123456789abcdef0"}, snapshots={}, report_sha256="",
                                     summary=long_summary, run_id="r")
    value = ssm.get_parameter(Name="/bakery/verifications/webapp/20261101.011")["Parameter"]["Value"]
    assert len(value.encode()) <= 4096 and json.loads(value)["summary"] == "x" * 512
    regions = {f"xx-region-{n}": "ami-0123456789abcdef0" for n in range(120)}
    with pytest.raises(OperationError, match="over SSM's 4096-byte standard-tier limit"):
        verification_record.write_record(ssm, image="webapp", version="20261101.012", passed=True, amis=regions,
                                         snapshots={}, report_sha256="", summary="", run_id="r")


def test_a_copy_passes_only_through_its_own_record_naming_a_passing_source(aws):
    """distribute's copies are in no bake record: each gets a write-once record of its own (home region), bound to the
    copy's AMI and snapshots and to the digest of the source's passing record."""
    other = "eu-west-1"
    home_ec2, other_ec2, ssm = (clients.client("ec2", REGION), clients.client("ec2", other),
                                clients.client("ssm", REGION))
    version = "20261101.013"
    source = register_ami(home_ec2, "webapp-source", version_tags(version))
    write_matching_record(home_ec2, source, version)
    copy = other_ec2.copy_image(SourceRegion=REGION, SourceImageId=source, Name="webapp-copy")["ImageId"]
    other_ec2.create_tags(Resources=[copy], Tags=tags.as_tag_list(version_tags(version)))
    described = amis.describe_ami(other_ec2, copy)
    record = verification_record.read_record(ssm, "webapp", version)
    assert verification_record.check_record(record, described, other) == (
        False, f"the record names no AMI {copy} in {other}")
    assert verification_record.read_copy_record(ssm, "webapp", version, other, copy) is None

    name = verification_record.write_copy_record(ssm, source=record, source_ami=source, source_region=REGION,
                                                 copy=described, region=other, run_id="dist-1")
    assert name == f"/bakery/verifications/webapp/copies/{version}/{other}/{copy}"
    assert verification_record.write_copy_record(ssm, source=record, source_ami=source, source_region=REGION,
                                                 copy=described, region=other, run_id="dist-2") == name  # same claim
    with pytest.raises(OperationError, match=r"a verification record for the copy .* already exists"):
        verification_record.write_copy_record(ssm, source={**record, "summary": "other"}, source_ami=source,
                                              source_region=REGION, copy=described, region=other, run_id="dist-3")
    written = verification_record.read_copy_record(ssm, "webapp", version, other, copy)
    passed, why = verification_record.check_copy_record(written, record, described, other)
    assert passed, why
    from_aws = {**described, "SourceImageId": source, "SourceImageRegion": REGION}  # set by AWS, not by moto
    assert verification_record.check_copy_record(written, record, from_aws, other)[0]

    refusals = {
        "region": (written, record, described, REGION),
        "snapshots": (written, record, {**described, "BlockDeviceMappings": [
            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-0123456789abcdef0"}}]}, other),
        "tags": (written, record, {**described, "Tags": tags.as_tag_list(version_tags("20261101.014"))}, other),
        "source digest": (written, {**record, "summary": "edited"}, described, other),
        "failed source": (written, {**record, "passed": False}, described, other),
        "source ami": (written, {**record, "amis": {REGION: "ami-0123456789abcdef0"}}, described, other),
        "aws says another source": (written, record, {**described, "SourceImageId": "ami-0123456789abcdef0",
                                                      "SourceImageRegion": REGION}, other),
        "no record": (None, record, described, other),
        "no source record": (written, None, described, other),
    }
    for case, args in refusals.items():
        assert verification_record.check_copy_record(*args)[0] is False, case


def test_the_policy_lets_the_ci_role_create_a_record_but_never_overwrite_one():
    policy = json.loads((Path(__file__).parents[2] / "docs" / "aws-iam-policy.json").read_text())
    # 111122223333: the account docs/aws-iam-policy.json is rendered for
    record = "arn:aws:ssm:us-east-1:111122223333:parameter/bakery/verifications/webapp/20261101.001"
    release = "arn:aws:ssm:us-east-1:111122223333:parameter/bakery/webapp/prod/current"
    assert evaluate([policy], "ssm:PutParameter", record, {"ssm:Overwrite": "false"}) == "allow"
    assert evaluate([policy], "ssm:PutParameter", record, {"ssm:Overwrite": "true"}) != "allow"
    assert evaluate([policy], "ssm:DeleteParameter", record, {}) != "allow"
    copy = record.replace("/webapp/", "/webapp/copies/") + "/eu-west-1/ami-0123456789abcdef0"  # distribute's
    assert evaluate([policy], "ssm:PutParameter", copy, {"ssm:Overwrite": "false"}) == "allow"
    assert evaluate([policy], "ssm:PutParameter", copy, {"ssm:Overwrite": "true"}) != "allow"
    assert evaluate([policy], "ssm:PutParameter", release, {"ssm:Overwrite": "true"}) == "allow"  # releases move
