"""`bake.py distribute IMAGE:VERSION`: one version's AMI in every region and account that launches it.

The version's AMI in the home region is the one its verification record names
there; a version without a record (never verified on AWS) is found by its tags.
Each other region gets a copy (CopyImage) unless one is there already; tags do
not travel with a copy, so the copy and its snapshots get the source's bakery:*
and Name tags (bakery:managed, bakery:image, bakery:version and the provenance;
not the CreatedBy and Ec2ImageBuilderArn that Image Builder adds, which the
policy does not let bakery put on anything): that is how the next run, gc and
deploys in that region find it. Every AMI that may be shared then gets launch
permission for the accounts, and every snapshot behind it create-volume
permission (without it an account can launch an encrypted AMI's instances but
not copy it): the home AMI, the copies this run made of it, and an AMI found in
another region only when a readback or copy record vouches for it
(bakery.aws.distribute_share); any other stays unshared and the run fails once
the rest is shared.

Nothing is shared, or copied, before the version passed `bake.py verify
--target aws`: distribute refuses a version whose home AMI has no passing
newest readback record (bakery.aws.readback_record) before its first copy or
grant, and it is the only place that shares: the bakes share with no account.

A copy is encrypted with the destination region's customer managed key
(aws.region_kms_key_ids, or aws.kms_key_id at home): a copy under the region's
default aws/ebs key cannot be launched by another account, so sharing with
accounts is refused up front for a region without a key.

Re-running changes nothing that is already right: copies are found by tag,
permissions are read before they are added. A copy's idempotency token holds
the run id: a retry within the run is the same request, while a copy removed by
hand is copied anew by the next run (not answered with the removed AMI's id).
Copies are asked for with the tags in TagSpecifications too, so on AWS a copy
interrupted before the final tagging is still found by the next run. The Packer bake copies its AMI to aws.regions
with the same calls (start_copies, wait_for_copies, tag_missing), so that
Packer itself never copies (bakery.builders.packer_bake).

A copy distribute makes is in no bake record (a record is written once), so when the
version's record passes for the source AMI, distribute writes a record for each
copy it made, in the home region (bakery.aws.verification_record): adoption in
the copy's region accepts the copy only through it. An AMI merely found by its
tags gets none: anyone allowed to tag could have tagged it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import amis, readback_record, tags, verification_record
from bakery.aws.clients import client, resolve_region
from bakery.aws.distribute_share import RegionResult as RegionResult
from bakery.aws.distribute_share import refusal, share, unshared
from bakery.aws.settings import ACCOUNT_RE, REGION_RE
from bakery.errors import ConfigError, OperationError
from bakery.progress import Progress

COPY_TIMEOUT = 3600.0  # seconds: an 8 GiB copy across regions usually takes 5-20 minutes
LIVE_STATES = ("pending", "available")


@dataclass
class Distribution:
    image: str
    version: str
    home_region: str
    accounts: list[str]
    regions: list[RegionResult] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.regions)

    def fail_if_unshared(self) -> None:
        """OperationError naming every region whose AMI was kept from the accounts asked for (after the output: what
        may be shared is shared; the operation still did not do what was asked)."""
        refused = unshared(self.regions, self.accounts)
        if refused:
            raise OperationError(f"{self.image}:{self.version} {refused}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["changed"] = self.changed
        for entry, result in zip(data["regions"], self.regions, strict=True):
            entry["changed"] = result.changed
        return data


def _parse_list(value: str | None, default: list[str], pattern, flag: str, what: str) -> list[str]:
    """A comma-separated list (or the default from bakery.yml), each item checked; a bad one is one line naming it."""
    items = [v.strip() for v in value.split(",") if v.strip()] if value else list(default)
    for item in items:
        if not pattern.match(item):
            raise ConfigError(f"{flag}: '{item}' is not {what}")
    return list(dict.fromkeys(items))


def parse_regions(value: str | None, default: list[str]) -> list[str]:
    return _parse_list(value, default, REGION_RE, "--regions", "an AWS region name like eu-west-1")


def parse_accounts(value: str | None, default: list[str]) -> list[str]:
    return _parse_list(value, default, ACCOUNT_RE, "--accounts", "a 12-digit AWS account id")


def version_tags(image: str, version: str) -> dict[str, str]:
    return {tags.MANAGED: "true", tags.IMAGE: image, tags.VERSION: version}


def copyable(values: dict[str, str]) -> dict[str, str]:
    """The tags a copy may carry: bakery:* and Name, the only keys the policy lets bakery tag with (an Image Builder
    AMI's CreatedBy and Ec2ImageBuilderArn stay behind)."""
    return {k: v for k, v in values.items() if k.startswith("bakery:") or k == "Name"}


def new_run_id() -> str:
    """A run id for a distribute called without one (each call is a run of its own)."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-distribute-{secrets.token_hex(3)}"


def find_version(ec2, image: str, version: str) -> dict[str, Any] | None:
    """The version's AMI in this region (pending or available), or None."""
    found = [i for i in amis.find_amis(ec2, version_tags(image, version)) if i.get("State") in LIVE_STATES]
    return found[0] if found else None


def check_keys_for_sharing(settings, home: str, regions: list[str], accounts: list[str]) -> None:
    """Sharing needs a customer managed key in every region: the default aws/ebs key cannot be granted to others."""
    if not accounts:
        return
    for region in dict.fromkeys([home, *regions]):
        if not settings.kms_key_for(region, home):
            setting = "aws.kms_key_id" if region == home else f"aws.region_kms_key_ids.{region}"
            raise ConfigError(f"bakery.yml: {setting} is not set: the AMI in {region} would be encrypted with the "
                              f"default aws/ebs key, which accounts {', '.join(accounts)} cannot use; set it to a "
                              "customer managed key whose policy allows them (docs/aws.md, Sharing encrypted AMIs)")


def copy_image(ec2, source: dict[str, Any], home: str, region: str, tag_values: dict[str, str], kms_key: str = "",
               description: str = "", *, run_id: str) -> str:
    """Ask `region` (its client: `ec2`) for a copy of the home AMI `source`; returns the copy's id at once.

    The tags (their bakery:* and Name only) are asked for in TagSpecifications,
    so on AWS the copy and its snapshots carry them (bakery:managed,
    bakery:run, ...) from creation: an interrupted run's copy is found and may
    be removed. `kms_key`: the region's key ('' keeps the source's encryption
    under the region's default key). `run_id`: a retry within the run makes no
    second copy; another run's request is a new one.
    """
    token = hashlib.sha256(f"bakery {source['ImageId']} {region} {kms_key} {run_id}".encode()).hexdigest()[:64]
    encryption = {"Encrypted": True, "KmsKeyId": kms_key} if kms_key else {}
    tag_list = tags.as_tag_list(copyable(tag_values))
    answer = ec2.copy_image(SourceRegion=home, SourceImageId=source["ImageId"], Name=source["Name"],
                            Description=description or source.get("Description")
                            or f"copy of {source['ImageId']} from {home}",
                            ClientToken=token,
                            TagSpecifications=[{"ResourceType": "image", "Tags": tag_list},
                                               {"ResourceType": "snapshot", "Tags": tag_list}],
                            **encryption)
    return answer["ImageId"]


def start_copies(clients: dict[str, Any], source: dict[str, Any], home: str, keys: dict[str, str],
                 tag_values: dict[str, str], progress: Progress, description: str = "", *,
                 run_id: str) -> dict[str, str]:
    """One copy of `source` per region of `keys` (region -> its key), all started before any is waited for;
    returns region -> copy id (wait_for_copies then waits for them together)."""
    started: dict[str, str] = {}
    for region, key in keys.items():
        started[region] = copy_image(clients[region], source, home, region, tag_values, key, description,
                                     run_id=run_id)
        progress.note(f"{region}: copying {source['ImageId']} from {home} as {started[region]}")
    return started


def wait_for_copies(clients: dict[str, Any], pending: dict[str, str], progress: Progress, timeout: float,
                    sleep: Callable[[float], None] = time.sleep, advice: str = "") -> dict[str, dict[str, Any]]:
    """Poll every copy (region -> AMI id) until all are available; a line whenever one changes state.

    Bounded by `timeout`. `advice`: what to do when a copy fails or outlasts it
    (default: distribute's).
    """
    started = time.monotonic()
    done: dict[str, dict[str, Any]] = {}
    last: dict[str, str] = {}
    delays = amis.backoff()
    while True:
        for region, ami_id in pending.items():
            if region in done:
                continue
            image = amis.describe_ami(clients[region], ami_id)
            state = image.get("State", "unknown") if image else "not visible yet"
            if state == "failed" and image:
                reason = (image.get("StateReason") or {}).get("Message", "no reason given")
                raise OperationError(f"copy {ami_id} in {region} failed: {reason}; "
                                     f"{advice or 'run distribute again to retry'}")
            if state != last.get(region):
                progress.note(f"{region}: {ami_id} {state} after {time.monotonic() - started:.0f} s")
                last[region] = state
            if state == "available" and image:
                done[region] = image
        if len(done) == len(pending):
            return done
        delay = next(delays)
        if time.monotonic() - started + delay > timeout:
            waiting = ", ".join(f"{r} ({pending[r]} {last[r]})" for r in pending if r not in done)
            raise OperationError(f"copies still not available after {timeout:.0f} s: {waiting}; " + (
                advice or "they go on in AWS: run distribute again later to share them (they get no verification "
                          "record: where the gate must pass them, deregister them and run distribute again with a "
                          "longer --timeout)"))
        sleep(delay)


def distribute(settings, image: str, version: str, regions: list[str], accounts: list[str], progress: Progress,
               timeout: float = COPY_TIMEOUT, sleep: Callable[[float], None] = time.sleep,
               run_id: str = "") -> Distribution:
    """Copy, record, tag and share one version; returns what was found and what changed in each region.

    `run_id`: the run's id (a new one when not given), in each copy's token and record.
    """
    run_id = run_id or new_run_id()
    home = resolve_region(settings.region)
    check_keys_for_sharing(settings, home, regions, accounts)
    ec2 = {region: client("ec2", region) for region in dict.fromkeys([home, *regions])}
    ssm = client("ssm", home)  # every verification record lives in the home region
    version_record, refused = _version_record(ssm, image, version)
    source = _source(ec2[home], image, version, home, version_record, progress, timeout, sleep)
    readback_record.require_passed(ssm, source, home)  # before any copy or grant
    record = _passing_record(version_record, refused, source, home, progress if len(ec2) > 1 else None)
    copied_tags = {**copyable(tags.from_tag_list(source.get("Tags"))), **version_tags(image, version)}
    result = Distribution(image=image, version=version, home_region=home, accounts=accounts)
    by_region = {home: RegionResult(region=home, ami_id=source["ImageId"])}
    pending: dict[str, str] = {}
    described: dict[str, dict[str, Any]] = {home: source}
    missing: dict[str, str] = {}  # region -> its key
    for region in ec2:
        if region == home:
            continue
        existing = find_version(ec2[region], image, version)
        if existing is None:
            missing[region] = settings.kms_key_for(region, home)
            continue
        by_region[region] = RegionResult(region=region, ami_id=existing["ImageId"])
        if existing.get("State") == "available":
            described[region] = existing
        else:
            pending[region] = existing["ImageId"]
    for region, ami_id in start_copies(ec2, source, home, missing, copied_tags, progress, run_id=run_id).items():
        by_region[region] = RegionResult(region=region, ami_id=ami_id, copied=True)
        pending[region] = ami_id
    by_region = {region: by_region[region] for region in ec2}  # in the order the regions were given
    if pending:
        described.update(wait_for_copies(ec2, pending, progress, timeout, sleep))
    for region, entry in by_region.items():
        image_data = described.get(region) or amis.describe_ami(ec2[region], entry.ami_id) or {}
        entry.state = image_data.get("State", "unknown")
        entry.snapshots = amis.snapshot_ids(image_data)
        note = ""
        if record is not None:  # first: a copy whose tagging or sharing fails is still the copy this run made
            note = _record(ssm, entry, image_data, (source["ImageId"], home), record, run_id)
        if region != home:
            tag_missing(ec2[region], entry, image_data, copied_tags)
        entry.why = refusal(ssm, entry, image_data, verified=region == home)  # source: require_passed above
        if entry.why:  # the next regions are still shared; the caller fails on result.unshared()
            progress.note(f"{region}: {entry.ami_id} is not shared: {entry.why}")
        else:
            if note:
                progress.note(note)
            share(ec2[region], entry, accounts)
        result.regions.append(entry)
    return result


def _version_record(ssm, image: str, version: str) -> tuple[dict[str, Any] | None, str]:
    """The version's record (None when it has none) and, without one, why."""
    try:
        record = verification_record.read_record(ssm, image, version)
    except ConfigError as exc:  # a version no record name can be made of has no record
        return None, str(exc)
    return record, "" if record is not None else f"none at {verification_record.parameter_name(image, version)}"


def _source(ec2, image: str, version: str, home: str, record: dict[str, Any] | None, progress: Progress,
            timeout: float, sleep: Callable[[float], None]) -> dict[str, Any]:
    """The version's AMI in the home region, once available: the one its record names, else the one tagged so."""
    if record is not None:
        return _recorded_source(ec2, image, version, home, record)
    source = find_version(ec2, image, version)
    if source is None:
        raise ConfigError(f"no AMI of {image}:{version} in {home} (tags {tags.IMAGE}={image}, "
                          f"{tags.VERSION}={version}); list versions with: ./bake.py images {image} --target aws")
    if source.get("State") != "available":
        progress.note(f"{home}: {source['ImageId']} is {source.get('State')}; waiting for it")
        source = amis.wait_until_visible(ec2, source["ImageId"], timeout=timeout, sleep=sleep)
    return source


def _recorded_source(ec2, image: str, version: str, home: str, record: dict[str, Any]) -> dict[str, Any]:
    """The AMI the version's record names in the home region: the AMI that was tested (or failed), not whichever
    AMI someone tagged as the version; refused when it is gone or not available."""
    name = verification_record.parameter_name(image, version)
    ami_id = (record.get("amis") or {}).get(home)
    found = amis.describe_ami(ec2, ami_id) if isinstance(ami_id, str) and ami_id else None
    if found is None or found.get("State") != "available":
        what = (f"names {ami_id} in {home}, which is " + (found.get("State", "unknown") if found else "gone")
                if ami_id else f"names no AMI in {home}")
        raise OperationError(f"{image}:{version}: the verification record {name} {what}; the version cannot be "
                             "distributed without it: bake a new version")
    return found


def _passing_record(record: dict[str, Any] | None, refused: str, source: dict[str, Any], home: str,
                    progress: Progress | None) -> dict[str, Any] | None:
    """The version's record when it passes for the source AMI (copies may then be recorded), else None."""
    passed, why = verification_record.check_record(record, source, home) if record is not None else (False, refused)
    if passed:
        return record
    if progress is not None:
        progress.note(f"{home}: {source['ImageId']} has no passing verification record ({why}); its copies get "
                      "none either")
    return None


def _record(ssm, entry: RegionResult, image_data: dict[str, Any], source: tuple[str, str], record: dict[str, Any],
            run_id: str) -> str:
    """The record that vouches for this region's AMI: the bake's, or a copy's (written for a copy this run made);
    returns a line for the progress when none does ('' when one does).

    `source`: the source AMI and its (home) region; `record`: the version's record, which passes for it.
    """
    image, version = record["image"], record["version"]
    if verification_record.check_record(record, image_data, entry.region)[0]:
        entry.record = verification_record.parameter_name(image, version)
        return ""
    if entry.copied:
        entry.record = verification_record.write_copy_record(
            ssm, source=record, source_ami=source[0], source_region=source[1], copy=image_data, region=entry.region,
            run_id=run_id)
        entry.record_written = True
        return ""
    found = verification_record.read_copy_record(ssm, image, version, entry.region, entry.ami_id)
    passed, why = verification_record.check_copy_record(found, record, image_data, entry.region)
    if passed:
        entry.record = verification_record.copy_parameter_name(image, version, entry.region, entry.ami_id)
        return ""
    if found is None:  # a copy an earlier run did not see finish, or any AMI someone tagged as the version
        return (f"{entry.region}: {entry.ami_id} has no verification record and was not copied by this run: it stays "
                "unverified; deregister it (and its snapshots) and run distribute again for a recorded copy")
    return f"{entry.region}: {entry.ami_id} stays unverified: {why}"


def tag_missing(ec2, entry: RegionResult, image_data: dict[str, Any], wanted: dict[str, str]) -> None:
    """Give a copy and its snapshots the version's tags where they lack them: a copy made without TagSpecifications
    (by an older bakery or by hand), or where they were not applied (moto ignores them); bakery:* and Name only."""
    wanted = copyable(wanted)
    current = {entry.ami_id: tags.from_tag_list(image_data.get("Tags"))}
    if entry.snapshots:
        for snapshot in ec2.describe_snapshots(SnapshotIds=entry.snapshots)["Snapshots"]:
            current[snapshot["SnapshotId"]] = tags.from_tag_list(snapshot.get("Tags"))
    lacking = [r for r in [entry.ami_id, *entry.snapshots]
               if any(current.get(r, {}).get(k) != v for k, v in wanted.items())]
    if not lacking:
        return
    try:
        ec2.create_tags(Resources=lacking, Tags=tags.as_tag_list(wanted))
    except ClientError as exc:
        raise OperationError(f"could not tag {', '.join(lacking)} in {entry.region}: {exc}; "
                             "run distribute again") from exc
    entry.tagged = lacking
