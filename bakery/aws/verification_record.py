"""A version's verification on AWS: a write-once SSM parameter, not a tag anyone who may tag can edit.

The builder that tested an AMI writes `/bakery/verifications/<image>/<version>`
once (PutParameter without Overwrite), holding the result, the AMI of every
region and the snapshots behind each, and the digest of the report. A checkout
that adopts the version from AWS (bakery.aws.adopt) accepts a passing result
only for an AMI the record names, backed by exactly the snapshots it names: a
`bakery:verified` tag (still set, for people reading the console) proves nothing.

A copy `bake.py distribute` makes later is in no bake record (a record is never
rewritten), so distribute writes one record per copy it made, also once, at
`/bakery/verifications/<image>/copies/<version>/<region>/<ami-id>`: the copy's
AMI and snapshots, the source AMI and the digest of the source's passing record.
Every record lives in the home region. The copy level keeps every parameter a
leaf (no name is the path of another) and the AMI id makes a new copy, after
one was removed, a new record instead of an overwrite. The `readback` level
holds the records of `bake.py verify --target aws` (bakery.aws.readback_record).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import amis, tags
from bakery.errors import ConfigError, OperationError
from bakery.provenance import utc_now

PREFIX = "/bakery/verifications"
COPIES = "copies"  # the level under an image that holds copy records: never a version (versions are dates)
READBACK = "readback"  # the level of `verify --target aws` records (bakery.aws.readback_record): never a version
RESERVED = (COPIES, READBACK)
# SSM names: a-zA-Z0-9_.- with '/' between levels, at most 1011 characters with the ARN; our prefix keeps the
# name clear of the reserved 'aws'/'ssm' start, and two 200-character levels stay far below the length limit
NAME_PART_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}\Z")
MAX_VALUE_BYTES = 4096  # SSM's standard tier; the advanced tier (8 KB) is charged per parameter, so it is not used
MAX_SUMMARY = 512  # a summary is shortened to this first, then (if the record is still too big) dropped


def parameter_name(image: str, version: str) -> str:
    """The record's SSM name; image and version must be single SSM path levels."""
    _check_levels(image=image, version=version)
    if version in RESERVED:
        raise ConfigError(f"verification record: version '{version}' is reserved for the records of "
                          + ("copies" if version == COPIES else "verify --target aws"))
    return f"{PREFIX}/{image}/{version}"


def copy_parameter_name(image: str, version: str, region: str, ami_id: str) -> str:
    """The SSM name of the record of one copy distribute made."""
    _check_levels(image=image, version=version, region=region, ami=ami_id)
    return f"{PREFIX}/{image}/{COPIES}/{version}/{region}/{ami_id}"


def _check_levels(**levels: str) -> None:
    for field, value in levels.items():
        if not NAME_PART_RE.match(value or ""):
            raise ConfigError(f"verification record: {field} '{value}' cannot be an SSM parameter name level: use "
                              "1-200 letters, digits, '_', '.' or '-'")


def record_sha256(record: dict[str, Any]) -> str:
    """The digest of a record as stored (encode's canonical JSON), which a copy's record names."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fit_summary(record: dict[str, Any]) -> str | None:
    """The record as compact JSON under the standard tier's 4 KB, shortening the summary if that is what it takes
    (None when even no summary is short enough)."""
    for summary in (record["summary"], record["summary"][:MAX_SUMMARY], ""):
        value = json.dumps({**record, "summary": summary}, sort_keys=True, separators=(",", ":"))
        if len(value.encode()) <= MAX_VALUE_BYTES:
            return value
    return None


def encode(record: dict[str, Any]) -> str:
    """The bake's record as fit_summary makes it, or why it is too big."""
    value = fit_summary(record)
    if value is not None:
        return value
    value = json.dumps({**record, "summary": ""}, sort_keys=True, separators=(",", ":"))
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
    put_once(ssm, name, encode(record), f"bakery verification of {image}:{version}, written once by its bake",
             f"a verification record for {image}:{version} already exists ({name}); records are written once: bake "
             "a new version instead of re-verifying this one")
    return name


def put_once(ssm, name: str, value: str, description: str, exists: str) -> None:
    """PutParameter that never replaces: an existing record is an OperationError saying `exists`."""
    try:
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=False, Tier="Standard",
                          Description=description)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterAlreadyExists":
            raise OperationError(exists) from exc
        raise


def version_taken(ec2, ssm, image: str, version: str) -> bool:
    """A builder must not hand out `version` again: an AMI has it (a disabled one too), or its write-once record
    exists (the AMIs of a version may be gone, by gc or by hand, while its record stays, and the next record write
    would be refused only after the whole build)."""
    return bool(amis.find_amis(ec2, {tags.IMAGE: image, tags.VERSION: version}, include_disabled=True)
                or read_record(ssm, image, version))


def read_record(ssm, image: str, version: str) -> dict[str, Any] | None:
    """The version's record, or None when it has none (never verified on AWS, or baked before records existed)."""
    return _read(ssm, parameter_name(image, version))


def _read(ssm, name: str) -> dict[str, Any] | None:
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
    if record is None:
        return False, f"no verification record for {ami_id}"
    if (record.get("amis") or {}).get(region) != ami_id:
        return False, f"the record names no AMI {ami_id} in {region}"
    wrong = _wrong_version_or_snapshots(record, (record.get("snapshots") or {}).get(region), ami)
    if wrong:
        return False, wrong
    if record.get("passed") is not True:
        return False, f"the record says {ami_id} failed: {record.get('summary') or 'no summary'}"
    return True, f"record: {record.get('summary') or 'passed'} (run {record.get('run_id', '?')})"


def _wrong_version_or_snapshots(record: dict[str, Any], recorded: list[str] | None, ami: dict[str, Any]) -> str:
    """Why the record does not describe this AMI's version and snapshots ('' when it does)."""
    facts = tags.from_tag_list(ami.get("Tags"))
    claimed = (record.get("image"), record.get("version"))
    if claimed != (facts.get(tags.IMAGE), facts.get(tags.VERSION)):
        return f"the record is for {claimed[0]}:{claimed[1]}, not the AMI's {tags.IMAGE}/{tags.VERSION} tags"
    actual, wanted = sorted(amis.snapshot_ids(ami)), sorted(recorded or [])
    if not actual or wanted != actual:
        return f"{ami.get('ImageId', '')}'s snapshots {actual} are not the record's {wanted}"
    return ""


# ---- copies made by `bake.py distribute`

COPY_FACTS = ("image", "version", "region", "ami", "snapshots", "source_ami", "source_region", "source_record",
              "source_record_sha256", "report_sha256")  # what a copy's record claims (run_id, written_at: context)


def write_copy_record(ssm, *, source: dict[str, Any], source_ami: str, source_region: str, copy: dict[str, Any],
                      region: str, run_id: str) -> str:
    """Write once (home region) the record of a copy of `source_ami`, whose record `source` passed; returns its name.

    Only for a copy the caller made itself (CopyImage answered with its id):
    an AMI found by its tags proves nothing. Writing the same claim again is
    no change; a different claim for the same copy is refused.
    """
    image, version, ami_id = source["image"], source["version"], copy["ImageId"]
    name = copy_parameter_name(image, version, region, ami_id)
    record = {"image": image, "version": version, "region": region, "ami": ami_id,
              "snapshots": sorted(amis.snapshot_ids(copy)), "source_ami": source_ami, "source_region": source_region,
              "source_record": parameter_name(image, version), "source_record_sha256": record_sha256(source),
              "report_sha256": source.get("report_sha256", ""), "run_id": run_id, "written_at": utc_now()}
    try:
        ssm.put_parameter(Name=name, Value=json.dumps(record, sort_keys=True, separators=(",", ":")), Type="String",
                          Overwrite=False, Tier="Standard",
                          Description=f"bakery verification of {image}:{version}'s copy in {region}, written once")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ParameterAlreadyExists":
            raise
        existing = _read(ssm, name) or {}
        if any(existing.get(key) != record[key] for key in COPY_FACTS):
            raise OperationError(f"a verification record for the copy {ami_id} of {image}:{version} in {region} "
                                 f"already exists ({name}) and says otherwise; records are written once: deregister "
                                 "the copy and run distribute again for a new one") from exc
    return name


def read_copy_record(ssm, image: str, version: str, region: str, ami_id: str) -> dict[str, Any] | None:
    """The record distribute wrote for this copy, or None."""
    return _read(ssm, copy_parameter_name(image, version, region, ami_id))


def check_copy_record(copy: dict[str, Any] | None, source: dict[str, Any] | None, ami: dict[str, Any],
                      region: str) -> tuple[bool, str]:
    """(True, why) only if `copy` names exactly this AMI in `region` and its snapshots, and was written from
    exactly `source` (the version's record, by its digest) for an AMI that record names as passed.

    Where EC2 says which AMI the copy was made from (SourceImageId, which AWS
    sets on CopyImage copies and moto does not), it must be the record's source.
    """
    ami_id = ami.get("ImageId", "")
    if copy is None:
        return False, f"no verification record for the copy {ami_id} in {region}"
    if source is None:
        return False, f"the record of the copy {ami_id} has no source record {copy.get('source_record')}"
    if (copy.get("ami"), copy.get("region")) != (ami_id, region):
        return False, f"the copy record names {copy.get('ami')} in {copy.get('region')}, not {ami_id} in {region}"
    wrong = _wrong_version_or_snapshots(copy, copy.get("snapshots"), ami)
    if wrong:
        return False, wrong
    if copy.get("source_record_sha256") != record_sha256(source):
        return False, f"the record of the copy {ami_id} was written for another source record than today's"
    origin = (copy.get("source_ami"), copy.get("source_region"))
    if (source.get("image"), source.get("version")) != (copy["image"], copy["version"]) or \
            (source.get("amis") or {}).get(origin[1]) != origin[0]:
        return False, f"the source record names no AMI {origin[0]} in {origin[1]} of {copy['image']}:{copy['version']}"
    if source.get("passed") is not True:
        return False, f"the source record says {origin[0]} failed: {source.get('summary') or 'no summary'}"
    said = (ami.get("SourceImageId"), ami.get("SourceImageRegion") or origin[1])
    if said[0] and said != origin:
        return False, f"EC2 says {ami_id} was made from {said[0]} in {said[1]}, not the record's {origin[0]}"
    return True, (f"record of the copy of {origin[0]} in {origin[1]}: {source.get('summary') or 'passed'} "
                  f"(run {source.get('run_id', '?')})")
