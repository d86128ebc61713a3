"""Adopt a version baked elsewhere (CI, another laptop) into this checkout's catalog, from its AMI's tags.

On AWS the AMI tags are the source of truth for what a version is and the local
SQLite catalog is a cache of them: a fresh CI container knows no version.
Adoption records the AMI as a ready version. Whether it passed its verification
comes from the version's write-once record (bakery.aws.verification_record),
never from the `bakery:verified` tag: anyone allowed to tag could set that. A
passing record counts only for the AMI and snapshots it names, or for a copy
`bake.py distribute` made and recorded (a record of its own, naming the passing
record); then the gate (bakery/verify/gate.py) and the pipeline's verify stage
accept the version there too. Records live in the home region, whichever region
the AMI is in: callers pass an SSM client there (`home_ssm`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bakery.aws import amis, tags, verification_record
from bakery.aws.clients import client, resolve_region
from bakery.catalog import Catalog
from bakery.errors import ConfigError
from bakery.provenance import utc_now

log = logging.getLogger("bakery.aws.adopt")


def find_version_ami(ec2, image: str, version: str) -> dict[str, Any] | None:
    """The newest available AMI bakery made for image:version in this region (a pending or failed one is no version)."""
    return amis.newest_available(ec2, {tags.MANAGED: "true", tags.IMAGE: image, tags.VERSION: version})


def home_ssm(settings) -> Any:
    """An SSM client in the home region (aws.region, else the AWS chain's), where every verification record lives."""
    return client("ssm", resolve_region(settings.region or None))


def adopt_ami(catalog: Catalog, ami: dict[str, Any], region: str, run_id: str, ssm=None) -> dict[str, Any]:
    """Record `ami` (a describe_images entry) as its version unless the catalog knows it; returns the catalog row.

    The verification is recorded only by the call that adopted the version, so
    repeated or concurrent adoptions never add a second row. `ssm`: a client in
    the home region, which holds the verification records (home_ssm); by
    default one in `region`, which is right only when `region` is the home
    region (the builders').
    """
    facts = tags.from_tag_list(ami.get("Tags"))
    image, version, ami_id = facts[tags.IMAGE], facts.get(tags.VERSION, ""), ami["ImageId"]
    row = catalog.version(image, version)
    if row is not None:
        return row
    digest = facts.get(tags.INPUT_DIGEST, "")
    provenance = {"image": image, "version": version, "input_digest": digest,
                  "git_commit": facts.get(tags.GIT_COMMIT, ""), "tags": facts, "amis": {region: ami_id}}
    adopted = catalog.adopt_version(image, version, run_id=run_id, pid=os.getpid(), image_ref=ami_id, image_id=ami_id,
                                    input_digest=digest, provenance=provenance)
    if adopted:
        log.info("recorded %s:%s (%s in %s) in the catalog: it was baked elsewhere", image, version, ami_id, region)
        adopt_verification(catalog, ami, region, run_id, ssm or client("ssm", region))
    return catalog.version(image, version) or {}


def adopt_verification(catalog: Catalog, ami: dict[str, Any], region: str, run_id: str, ssm,
                       record: dict[str, Any] | None = None) -> None:
    """Record the version's verification from its record: passed only if the record matches this AMI exactly, or
    names it through the record distribute wrote for the copy.

    A record that says failed counts as failed whatever AMI it names (it can
    only make the gate stricter). The tags are read only to explain a refusal.
    `record`: the version's record when the caller read it already.
    """
    facts = tags.from_tag_list(ami.get("Tags"))
    image, version, ami_id = facts[tags.IMAGE], facts.get(tags.VERSION, ""), ami["ImageId"]
    if record is None:
        record, why = read_record(ssm, image, version)
    reports: dict[str, str] = {"ami": ami_id}
    if record is not None:
        passed, why, reports = check_ami(ssm, record, ami, region)
    if record is None or not (passed or record.get("passed") is False):
        if record is not None or facts.get(tags.VERIFIED) == "passed":
            log.warning("%s:%s (%s in %s) adopted without a passing verification: %s (a %s tag is no proof)",
                        image, version, ami_id, region, why, tags.VERIFIED)
        return
    reports["report_sha256"] = str(record.get("report_sha256", ""))
    catalog.record_verification(image, version, env=None, started=utc_now(), seconds=0.0, passed=passed,
                                run_id=run_id, summary=str(record.get("summary") or why), reports=reports)


def read_record(ssm, image: str, version: str) -> tuple[dict[str, Any] | None, str]:
    """The version's record and, when there is none, why."""
    try:
        record = verification_record.read_record(ssm, image, version)
    except ConfigError as exc:  # tags no record name can be made of: there is no record
        return None, str(exc)
    return record, f"no verification record {verification_record.PREFIX}/{image}/{version}"


def check_ami(ssm, record: dict[str, Any], ami: dict[str, Any], region: str) -> tuple[bool, str, dict[str, str]]:
    """(passed, why, reports): whether the version's record vouches for exactly this AMI (a describe_images entry),
    itself or through the record distribute wrote for it as a copy; reports name the records read."""
    facts = tags.from_tag_list(ami.get("Tags"))
    reports = {"ami": ami["ImageId"],
               "record": verification_record.parameter_name(facts[tags.IMAGE], facts.get(tags.VERSION, ""))}
    if facts.get(tags.MANAGED) != "true":
        return False, f"{ami['ImageId']} is not tagged {tags.MANAGED}=true", reports
    passed, why = verification_record.check_record(record, ami, region)
    if not passed and record.get("passed") is True and (record.get("amis") or {}).get(region) != ami["ImageId"]:
        passed, why = _check_copy(ssm, record, ami, region, reports)
    return passed, why, reports


def _check_copy(ssm, record: dict[str, Any], ami: dict[str, Any], region: str,
                reports: dict[str, str]) -> tuple[bool, str]:
    """An AMI the version's passing record does not name passes only as a copy distribute made and recorded."""
    facts = tags.from_tag_list(ami.get("Tags"))
    image, version, ami_id = facts[tags.IMAGE], facts.get(tags.VERSION, ""), ami["ImageId"]
    name = verification_record.copy_parameter_name(image, version, region, ami_id)
    copy = verification_record.read_copy_record(ssm, image, version, region, ami_id)
    if copy is None:
        return False, f"the record names no AMI {ami_id} in {region}, and no copy record {name} does"
    reports.update(record=name, source_record=verification_record.parameter_name(image, version))
    return verification_record.check_copy_record(copy, record, ami, region)


def adopt_version(catalog: Catalog, ec2, image: str, version: str, region: str, run_id: str,
                  ssm=None) -> dict[str, Any] | None:
    """image:version's catalog row, adopted from its AMI's tags when the catalog lacks it; None if there is no AMI.

    A row with no verification yet reads the record again: a version adopted
    before its record was written (Packer's home AMI is tagged while bake.py
    copies it, the record is written after the copies) is verified once the
    record exists. That costs one GetParameter per adoption until then.
    """
    row = catalog.version(image, version)
    if row is None:
        ami = find_version_ami(ec2, image, version)
        return adopt_ami(catalog, ami, region, run_id, ssm) if ami else None
    if not catalog.verifications(image, version):
        _verify_again(catalog, ec2, image, version, region, run_id, ssm or client("ssm", region))
    return row


def _verify_again(catalog: Catalog, ec2, image: str, version: str, region: str, run_id: str, ssm) -> None:
    """Record the verification of a version adopted without one, from its record if it was written since: checked
    on the AMI the record names in `region`, else on the version's newest AMI there (a copy)."""
    record, _ = read_record(ssm, image, version)
    if record is None:
        return
    named = (record.get("amis") or {}).get(region)
    ami = amis.describe_ami(ec2, named) if named else None
    if ami is None or ami.get("State") != "available":
        ami = find_version_ami(ec2, image, version)
    if ami is not None and not catalog.verifications(image, version):
        adopt_verification(catalog, ami, region, run_id, ssm, record)
