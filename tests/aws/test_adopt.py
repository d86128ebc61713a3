"""Adopting a version baked elsewhere from its AMI's tags (moto server): its catalog row and its build's checks."""

from __future__ import annotations

import pytest

from bakery.aws import adopt, clients, tags
from bakery.catalog import open_catalog
from bakery.errors import OperationError
from bakery.verify import gate
from tests.aws.test_amis import register_ami

pytestmark = pytest.mark.aws

REGION = "us-east-1"


def version_tags(version: str, **extra: str) -> dict[str, str]:
    return {tags.MANAGED: "true", tags.IMAGE: "webapp", tags.VERSION: version, tags.INPUT_DIGEST: "sha256:aa",
            tags.GIT_COMMIT: "0123456789ab", **extra}


def test_adoption_records_the_version_and_its_passed_verification_once(aws, tmp_path):
    ec2 = clients.client("ec2", REGION)
    ami = register_ami(ec2, "webapp-20261101.001-x", version_tags("20261101.001", **{
        tags.VERIFIED: "passed", tags.VERIFICATION: "testinfra on the build instance: 12 passed, 0 failed, 0 skipped"}))
    catalog = open_catalog(tmp_path / ".bakery")  # a fresh CI container: knows nothing
    with pytest.raises(OperationError, match="has no verification"):
        gate.require_verified(catalog, "webapp", "20261101.001", required=True, force=False, env="prod")

    row = adopt.adopt_version(catalog, ec2, "webapp", "20261101.001", REGION, "run-1")
    assert row is not None and (row["status"], row["image_ref"], row["input_digest"]) == ("ready", ami, "sha256:aa")
    assert row["provenance"]["amis"] == {REGION: ami} and row["git_commit"] == "0123456789ab"
    [verification] = catalog.verifications("webapp", "20261101.001")
    assert verification["passed"] and verification["env"] is None and verification["reports"] == {"ami": ami}
    assert verification["summary"].endswith("12 passed, 0 failed, 0 skipped")
    assert gate.require_verified(catalog, "webapp", "20261101.001", required=True, force=False, env="prod") is False

    again = adopt.adopt_version(catalog, ec2, "webapp", "20261101.001", REGION, "run-2")
    assert again is not None and again["run_id"] == "run-1"
    assert adopt.adopt_ami(
        catalog, ec2.describe_images(ImageIds=[ami])["Images"][0], REGION, "run-3")["run_id"] == "run-1"
    assert len(catalog.verifications("webapp", "20261101.001")) == 1  # idempotent: one adoption, one verification


def test_adoption_keeps_a_failed_result_failed_and_an_untested_one_unverified(aws, tmp_path):
    ec2 = clients.client("ec2", REGION)
    register_ami(ec2, "webapp-failed",
                 version_tags("20261101.002", **{tags.VERIFIED: "failed", tags.VERIFICATION: "1 failed"}))
    register_ami(ec2, "webapp-untested", version_tags("20261101.003"))
    catalog = open_catalog(tmp_path / ".bakery")
    assert adopt.adopt_version(catalog, ec2, "webapp", "20261101.002", REGION, "run-1") is not None
    [verification] = catalog.verifications("webapp", "20261101.002")
    assert not verification["passed"] and verification["summary"] == "1 failed"
    with pytest.raises(OperationError, match=r"failed its last verification \(1 failed\)"):
        gate.require_verified(catalog, "webapp", "20261101.002", required=True, force=False, env="prod")

    assert adopt.adopt_version(catalog, ec2, "webapp", "20261101.003", REGION, "run-1")["status"] == "ready"
    assert catalog.verifications("webapp", "20261101.003") == []  # nothing claimed that the tags do not say


def test_adoption_finds_nothing_for_unknown_foreign_or_unavailable_amis(aws, tmp_path):
    ec2 = clients.client("ec2", REGION)
    register_ami(ec2, "not-managed", {tags.IMAGE: "webapp", tags.VERSION: "20261101.004"})  # not bakery's
    ami = register_ami(ec2, "webapp-gone", version_tags("20261101.005"))
    ec2.deregister_image(ImageId=ami)
    catalog = open_catalog(tmp_path / ".bakery")
    for version in ("20261101.004", "20261101.005", "20261101.999"):
        assert adopt.adopt_version(catalog, ec2, "webapp", version, REGION, "run-1") is None
    assert catalog.versions("webapp", status=None) == []
