"""A version's verification on AWS: a write-once SSM parameter, not a tag anyone who may tag can edit.

The builder that tested an AMI writes `/bakery/verifications/<image>/<version>`
once (PutParameter without Overwrite), holding the result, the AMI of every
region and the snapshots behind each, and the digest of the report. A checkout
that adopts the version from AWS (bakery.aws.adopt) accepts a passing result
only for an AMI the record names, backed by exactly the snapshots it names: a
`bakery:verified` tag (still set, for people reading the console) proves nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import amis, tags
from bakery.errors import ConfigError, OperationError
from bakery.provenance import utc_now

PREFIX = "/bakery/verifications"
# SSM names: a-zA-Z0-9_.- with '/' between levels, at most 1011 characters with the ARN; our prefix keeps the
# name clear of the reserved 'aws'/'ssm' start, and two 200-character levels stay far below the length limit
NAME_PART_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
MAX_VALUE_BYTES = 4096  # SSM's standard tier; the advanced tier (8 KB) is charged per parameter, so it is not used
MAX_SUMMARY = 512  # a summary is shortened to this first, then (if the record is still too big) dropped


def parameter_name(image: str, version: str) -> str:
    """The record's SSM name; image and version must be single SSM path levels."""
    for field, value in (("image", image), ("version", version)):
        if not NAME_PART_RE.match(value or ""):
            raise ConfigError(f"verification record: {field} '{value}' cannot be an SSM parameter name level: use "
                              "1-200 letters, digits, '_', '.' or '-'")
    return f"{PREFIX}/{image}/{version}"


def encode(record: dict[str, Any]) -> str:
    """The record as compact JSON under the standard tier's 4 KB, shortening the summary if that is what it takes."""
    for summary in (record["summary"], record["summary"][:MAX_SUMMARY], ""):
        value = json.dumps({**record, "summary": summary}, sort_keys=True, separators=(",", ":"))
        if len(value.encode()) <= MAX_VALUE_BYTES:
            return value
    raise OperationError(f"the verification record of {record['image']}:{record['version']} is "
                         f"{len(value.encode())} bytes, over SSM's {MAX_VALUE_BYTES}-byte standard-tier limit "
                         f"({len(record['amis'])} regions); copy the AMI to fewer regions in the bake and use "
                         "`bake.py distribute` for the rest")


def write_record(ssm, *, image: str, version: str, passed: bool, amis: dict[str, str],
                 snapshots: dict[str, list[str]], report_sha256: str, summary: str, run_id: str) -> str:
    """Write the version's verification once (in the home region); returns the parameter name.

    A second write for the same version is refused: a record cannot be
    replaced by a later, different claim (a new bake is a new version).
    """
    name = parameter_name(image, version)
    record = {"image": image, "version": version, "passed": bool(passed), "amis": dict(amis),
              "snapshots": {region: sorted(ids) for region, ids in snapshots.items()},
              "report_sha256": report_sha256, "summary": summary, "run_id": run_id, "written_at": utc_now()}
    try:
        ssm.put_parameter(Name=name, Value=encode(record), Type="String", Overwrite=False, Tier="Standard",
                          Description=f"bakery verification of {image}:{version}, written once by its bake")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterAlreadyExists":
            raise OperationError(f"a verification record for {image}:{version} already exists ({name}); records "
                                 "are written once: bake a new version instead of re-verifying this one") from exc
        raise
    return name


def read_record(ssm, image: str, version: str) -> dict[str, Any] | None:
    """The version's record, or None when it has none (never verified on AWS, or baked before records existed)."""
    name = parameter_name(image, version)
    try:
        value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise
    try:
        record = json.loads(value)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise OperationError(f"the verification record {name} is not a JSON object; it was not written by bakery: "
                             "delete it (ssm delete-parameter) and re-verify by baking a new version")
    return record


def check_record(record: dict[str, Any] | None, ami: dict[str, Any], region: str) -> tuple[bool, str]:
    """(True, why) only if the record says passed for exactly this AMI in `region` and exactly its snapshots."""
    ami_id = ami.get("ImageId", "")
    facts = tags.from_tag_list(ami.get("Tags"))
    if record is None:
        return False, f"no verification record for {ami_id}"
    claimed = (record.get("image"), record.get("version"))
    if claimed != (facts.get(tags.IMAGE), facts.get(tags.VERSION)):
        return False, f"the record is for {claimed[0]}:{claimed[1]}, not the AMI's {tags.IMAGE}/{tags.VERSION} tags"
    if (record.get("amis") or {}).get(region) != ami_id:
        return False, f"the record names no AMI {ami_id} in {region}"
    recorded = sorted((record.get("snapshots") or {}).get(region) or [])
    actual = sorted(amis.snapshot_ids(ami))
    if not actual or recorded != actual:
        return False, f"{ami_id}'s snapshots {actual} are not the record's {recorded}"
    if record.get("passed") is not True:
        return False, f"the record says {ami_id} failed: {record.get('summary') or 'no summary'}"
    return True, f"record: {record.get('summary') or 'passed'} (run {record.get('run_id', '?')})"
