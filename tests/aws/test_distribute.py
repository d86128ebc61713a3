"""distribute against moto server: a tagged copy in the other region, shared with the accounts (AMIs and snapshots),
and a re-run changes nothing; a version whose AMI has not passed verify --target aws is neither copied nor shared."""

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


def read_back(ami: str, version: str = VERSION, *, passed: bool = True, run_id: str = "verify-aws-1") -> str:
    """What `bake.py verify sample:VERSION --target aws` writes for the home AMI `ami` (home region's SSM)."""
    from bakery.aws import clients, readback_record

    snapshots = amis.snapshot_ids(amis.describe_ami(boto3.client("ec2", HOME), ami))
    return readback_record.write(clients.client("ssm", HOME), image="sample", version=version, region=HOME, ami=ami,
                                 snapshots=snapshots, disk_sha256="cd" * 32, passed=passed, report_sha256="ab" * 32,
                                 summary="vm passed" if passed else "secrets: 1 finding (root/.ssh/id_rsa)",
                                 run_id=run_id, env="")


def verified_ami(ec2, version: str = VERSION, **extra: str) -> tuple[str, list[str]]:
    """A home AMI of sample:version that passed verify --target aws."""
    ami, snapshots = version_ami(ec2, "sample", version, **extra)
    read_back(ami, version)
    return ami, snapshots


def test_a_version_that_has_not_passed_verify_target_aws_is_neither_copied_nor_shared(aws, proj, monkeypatch):
    from bakery.aws import readback_record

    with_aws_settings(proj, [HOME, OTHER], ACCOUNTS, KEYS)
    home, other = boto3.client("ec2", HOME), boto3.client("ec2", OTHER)
    source, snapshots = version_ami(home, "sample", VERSION)
    home_record(VERSION, source, snapshots)  # its bake's own test passed: not the gate

    unverified = bake(proj, "distribute", f"sample:{VERSION}")
    assert unverified.rc == 1 and unverified.stderr.count("\n") == 1, unverified.stderr
    assert (f"sample:{VERSION} (AMI {source} in {HOME}) has not passed verify --target aws; run ./bake.py verify "
            f"sample:{VERSION} --target aws first") in unverified.stderr
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T10:00:00Z")
    read_back(source)
    monkeypatch.setattr(readback_record, "utc_now", lambda: "2026-12-01T11:00:00Z")
    read_back(source, passed=False, run_id="verify-aws-2")  # the newest counts
    failed = bake(proj, "distribute", f"sample:{VERSION}")
    assert failed.rc == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert (f"has not passed verify --target aws (its last one failed: secrets: 1 finding (root/.ssh/id_rsa)); "
            f"run ./bake.py verify sample:{VERSION} --target aws first") in failed.stderr

    assert not amis.find_amis(other, {tags.IMAGE: "sample"})  # nothing copied
    assert shared_with(home, source) == (set(), {s: set() for s in snapshots})  # nothing shared


def test_distribute_copies_tags_and_shares_then_a_rerun_is_a_no_op(aws, proj):
    with_aws_settings(proj, [HOME, OTHER], ACCOUNTS, KEYS)
    home, other = boto3.client("ec2", HOME), boto3.client("ec2", OTHER)
    source, snapshots = verified_ami(home, **{tags.INPUT_DIGEST: "sha256:abc"})
    home_record(VERSION, source, snapshots)  # the bake's record: the copy gets one, which vouches for it next time

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
    verified_ami(boto3.client("ec2", HOME))
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


# ---- verification records of copies: written in the home region, for the copies distribute itself made


def home_record(version: str, ami: str, snapshots: list[str], *, passed: bool = True) -> str:
    """The bake's record of image sample:version (home region only), as the builders write it."""
    from bakery.aws import clients, verification_record

    return verification_record.write_record(
        clients.client("ssm", HOME), image="sample", version=version, passed=passed, amis={HOME: ami},
        snapshots={HOME: snapshots}, report_sha256="ab" * 32, summary="12 passed" if passed else "1 failed",
        run_id="bake-1")


def adopted_verifications(tmp_path, ec2, version: str, region: str) -> list[dict]:
    """What a fresh checkout deploying in `region` records for the version (the record read in the home region)."""
    from bakery.aws import adopt, clients
    from bakery.catalog import open_catalog

    catalog = open_catalog(tmp_path / f"ci-{version}-{region}")
    try:
        assert adopt.adopt_version(catalog, ec2, "sample", version, region, "run-1",
                                   ssm=clients.client("ssm", HOME)) is not None
        return catalog.verifications("sample", version)
    finally:
        catalog.close()


def copy_records(region: str = HOME) -> list[str]:
    found = boto3.client("ssm", region).get_parameters_by_path(Path="/bakery", Recursive=True)["Parameters"]
    return sorted(p["Name"] for p in found if "/copies/" in p["Name"])


def test_distribute_writes_a_record_for_each_copy_it_makes_and_the_copy_passes_the_gate_by_it(aws, proj, tmp_path):
    from bakery.aws import verification_record

    with_aws_settings(proj, [HOME, OTHER])
    home, other = boto3.client("ec2", HOME), boto3.client("ec2", OTHER)
    source, snapshots = verified_ami(home)
    main = home_record(VERSION, source, snapshots)

    first = bake(proj, "distribute", f"sample:{VERSION}", "--regions", OTHER, "--json")

    assert first.rc == 0, first.stderr
    result = {r["region"]: r for r in first.json["regions"]}
    copy = result[OTHER]["ami_id"]
    name = f"/bakery/verifications/sample/copies/{VERSION}/{OTHER}/{copy}"
    assert (result[HOME]["record"], result[HOME]["record_written"]) == (main, False)
    assert (result[OTHER]["record"], result[OTHER]["record_written"]) == (name, True)
    assert copy_records() == [name] and copy_records(OTHER) == []  # records live in the home region only
    written = verification_record.read_copy_record(boto3.client("ssm", HOME), "sample", VERSION, OTHER, copy)
    source_record = verification_record.read_record(boto3.client("ssm", HOME), "sample", VERSION)
    assert {k: written[k] for k in ("image", "version", "region", "ami", "snapshots", "source_ami", "source_region",
                                    "source_record", "source_record_sha256", "report_sha256")} == {
        "image": "sample", "version": VERSION, "region": OTHER, "ami": copy,
        "snapshots": sorted(amis.snapshot_ids(amis.describe_ami(other, copy))), "source_ami": source,
        "source_region": HOME, "source_record": main,
        "source_record_sha256": verification_record.record_sha256(source_record), "report_sha256": "ab" * 32}

    [verification] = adopted_verifications(tmp_path, other, VERSION, OTHER)
    assert verification["passed"] and verification["reports"]["record"] == name
    assert verification["reports"]["source_record"] == main

    again = bake(proj, "distribute", f"sample:{VERSION}", "--regions", OTHER, "--json")
    assert again.rc == 0, again.stderr
    regions = {r["region"]: r for r in again.json["regions"]}
    assert not again.json["changed"] and (regions[OTHER]["record"], regions[OTHER]["record_written"]) == (name, False)
    assert copy_records() == [name]


def test_no_record_for_copies_of_an_unverified_version_nor_for_an_ami_found_by_its_tags(aws, proj, tmp_path):
    with_aws_settings(proj, [HOME, OTHER])
    home, other = boto3.client("ec2", HOME), boto3.client("ec2", OTHER)
    failed, failed_snapshots = verified_ami(home)  # its bake's test failed, verify --target aws passed
    home_record(VERSION, failed, failed_snapshots, passed=False)
    untested = "20260101.008"
    verified_ami(home, untested)
    # a passing version whose "copy" in OTHER is an AMI anyone allowed to tag could have tagged
    forged_version = "20260101.009"
    source, snapshots = verified_ami(home, forged_version)
    home_record(forged_version, source, snapshots)
    forged, _ = version_ami(other, "sample", forged_version, OTHER)

    for version in (VERSION, untested, forged_version):
        outcome = bake(proj, "distribute", f"sample:{version}", "--regions", OTHER, "--json")
        assert outcome.rc == 0, outcome.stderr
        [entry] = [r for r in outcome.json["regions"] if r["region"] == OTHER]
        assert (entry["record"], entry["record_written"]) == ("", False)
        assert bool(entry["copied"]) is (version != forged_version)
    assert copy_records() == []
    assert [v["passed"] for v in adopted_verifications(tmp_path, other, VERSION, OTHER)] == [False]
    assert adopted_verifications(tmp_path, other, untested, OTHER) == []
    assert adopted_verifications(tmp_path, other, forged_version, OTHER) == []
    progress = bake(proj, "distribute", f"sample:{forged_version}", "--regions", OTHER)
    assert (f"{OTHER}: {forged} is not shared: it was found by its tags and not copied by this run, and no "
            "readback record or copy record vouches for it" in progress.stderr), progress.stderr
    assert progress.rc == 0  # no account asked for: nothing was left undone


# ---- what a copy asks for: its tags, its idempotency token, its source


def recorded_calls(monkeypatch, *operations: str) -> list[tuple[str, str, dict]]:
    """(region, operation, parameters) of every call to `operations` distribute's clients make, as sent (moto
    ignores CopyImage's TagSpecifications, so they can only be checked here)."""
    from bakery.aws import clients
    from bakery.aws import distribute as dist

    calls: list[tuple[str, str, dict]] = []

    def recording_client(service, region=None, profile=None):
        made = clients.client(service, region, profile)
        for operation in operations:
            made.meta.events.register(f"provide-client-params.{service}.{operation}",
                                      lambda params, _op=operation, _region=region, **_:
                                      calls.append((_region, _op, dict(params))))
        return made

    monkeypatch.setattr(dist, "client", recording_client)
    return calls


def distribute_in_process(proj, version: str = VERSION, run_id: str | None = None):
    from bakery.aws import distribute as dist
    from bakery.config import Project
    from bakery.progress import Progress

    settings = Project(proj).aws
    extra = {"run_id": run_id} if run_id else {}
    return dist.distribute(settings, "sample", version, [OTHER], [], Progress(io.StringIO()), **extra)


def test_a_copy_carries_only_bakery_and_name_tags_not_image_builders(aws, proj, monkeypatch):
    calls = recorded_calls(monkeypatch, "CopyImage", "CreateTags")
    with_aws_settings(proj, [HOME, OTHER])
    # Image Builder tags its AMIs with these; the policy lets bakery put only bakery:* and Name tags on a copy
    verified_ami(boto3.client("ec2", HOME), CreatedBy="arn:aws:iam::123456789012:role/x",
                Ec2ImageBuilderArn="arn:aws:imagebuilder:us-east-1:123456789012:image/sample/1.0.0/1")

    result = distribute_in_process(proj)

    [copy] = [r for r in result.regions if r.copied]
    [copy_call] = [params for _, op, params in calls if op == "CopyImage"]
    tag_calls = [params for region, op, params in calls if op == "CreateTags" and region == OTHER]
    assert tag_calls  # moto ignored the TagSpecifications: tag_missing tagged the copy
    asked = [{t["Key"] for t in spec["Tags"]} for spec in copy_call["TagSpecifications"]]
    asked += [{t["Key"] for t in params["Tags"]} for params in tag_calls]
    assert all(keys == {"Name", tags.MANAGED, tags.IMAGE, tags.VERSION, tags.GIT_COMMIT} for keys in asked), asked
    copy_tags = tags.from_tag_list(amis.describe_ami(boto3.client("ec2", OTHER), copy.ami_id)["Tags"])
    assert "CreatedBy" not in copy_tags and copy_tags[tags.VERSION] == VERSION


def test_each_run_asks_for_a_new_copy_while_a_retry_within_a_run_is_the_same_request(aws, proj, monkeypatch):
    from bakery.aws import distribute as dist

    calls = recorded_calls(monkeypatch, "CopyImage")
    with_aws_settings(proj, [HOME, OTHER])
    other = boto3.client("ec2", OTHER)
    verified_ami(boto3.client("ec2", HOME))

    [first] = [r.ami_id for r in distribute_in_process(proj).regions if r.copied]
    other.deregister_image(ImageId=first)  # removed by hand; distribute again in a later run
    [second] = [r.ami_id for r in distribute_in_process(proj).regions if r.copied]

    tokens = [params["ClientToken"] for _, op, params in calls if op == "CopyImage"]
    assert second != first and len(tokens) == 2 and tokens[0] != tokens[1]
    assert all(0 < len(token) <= 64 for token in tokens)  # EC2's limit for a client token

    [source] = amis.find_amis(boto3.client("ec2", HOME), {tags.VERSION: VERSION})
    retried = []
    other.meta.events.register("provide-client-params.ec2.CopyImage",
                               lambda params, **_: retried.append(params["ClientToken"]))
    for _ in range(2):  # the same copy asked for twice in one run
        dist.copy_image(other, source, HOME, OTHER, tags.from_tag_list(source["Tags"]),
                        run_id="20260101T000000Z-distribute-abc123")
    assert len(retried) == 2 and retried[0] == retried[1] and retried[0] not in tokens


def test_the_source_is_the_ami_the_record_names_not_the_newest_ami_tagged_with_the_version(aws, proj, monkeypatch):
    import time

    calls = recorded_calls(monkeypatch, "CopyImage")
    with_aws_settings(proj, [HOME, OTHER])
    home = boto3.client("ec2", HOME)
    recorded, snapshots = verified_ami(home)
    home_record(VERSION, recorded, snapshots)
    time.sleep(1.1)  # EC2's CreationDate has whole seconds
    newer, _ = version_ami(home, "sample", VERSION)  # anyone allowed to tag can tag an AMI as the version
    assert amis.find_amis(home, {tags.VERSION: VERSION})[0]["ImageId"] == newer

    result = distribute_in_process(proj)

    assert result.regions[0].ami_id == recorded
    assert [params["SourceImageId"] for _, op, params in calls if op == "CopyImage"] == [recorded]
    assert [r.record_written for r in result.regions if r.copied] == [True]


def test_distribute_refuses_when_the_ami_the_record_names_is_gone(aws, proj):
    with_aws_settings(proj, [HOME, OTHER])
    home = boto3.client("ec2", HOME)
    recorded, snapshots = version_ami(home, "sample", VERSION)
    home_record(VERSION, recorded, snapshots)
    home.deregister_image(ImageId=recorded)
    version_ami(home, "sample", VERSION)  # another AMI tagged with the version is no stand-in

    refused = bake(proj, "distribute", f"sample:{VERSION}", "--regions", OTHER)

    assert refused.rc == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert recorded in refused.stderr and "/bakery/verifications/sample/" + VERSION in refused.stderr
    assert not amis.find_amis(boto3.client("ec2", OTHER), {tags.IMAGE: "sample"})  # nothing copied


# ---- sharing in other regions: only what a readback record vouches for, or the copy this run made


def test_an_ami_found_by_its_tags_in_another_region_is_shared_only_when_a_readback_record_vouches_for_it(aws, proj):
    from bakery.aws import clients, readback_record

    with_aws_settings(proj, [HOME, OTHER], ACCOUNTS, KEYS)
    home, other = boto3.client("ec2", HOME), boto3.client("ec2", OTHER)
    source, snapshots = verified_ami(home)
    home_record(VERSION, source, snapshots)
    forged, forged_snapshots = version_ami(other, "sample", VERSION, OTHER)  # anyone allowed to tag could tag it

    refused = bake(proj, "distribute", f"sample:{VERSION}", "--json")

    [line, error] = refused.stderr.splitlines()  # one progress line for the region, one error line at the end
    assert refused.rc == 1 and line.startswith(f"{OTHER}: {forged} is not shared: it was found by its tags"), line
    assert error.startswith(f"bake.py: error: sample:{VERSION} not shared in {OTHER} ({forged}): "), error
    result = {r["region"]: r for r in refused.json["regions"]}
    assert (result[HOME]["shared"], result[HOME]["why"]) == (True, "")  # what may be shared is shared first
    assert result[OTHER]["shared"] is False and "not copied by this run" in result[OTHER]["why"]
    assert shared_with(home, source) == (set(ACCOUNTS), {s: set(ACCOUNTS) for s in snapshots})
    assert shared_with(other, forged) == (set(), {s: set() for s in forged_snapshots})
    text = bake(proj, "distribute", f"sample:{VERSION}")
    assert text.rc == 1 and f"{OTHER}: {forged} is not shared: " in text.stderr, text.stderr

    # verify --target aws --region OTHER on that very AMI vouches for it: failed, it stays unshared; passed, shared
    def read_back_there(passed: bool, run_id: str) -> None:
        readback_record.write(clients.client("ssm", HOME), image="sample", version=VERSION, region=OTHER, ami=forged,
                              snapshots=forged_snapshots, disk_sha256="cd" * 32, passed=passed,
                              report_sha256="ab" * 32, summary="vm passed" if passed else "vm failed", run_id=run_id,
                              env="")

    read_back_there(False, "verify-there-1")
    failed = bake(proj, "distribute", f"sample:{VERSION}", "--json")
    assert failed.rc == 1 and "vm failed" in {r["region"]: r for r in failed.json["regions"]}[OTHER]["why"]
    assert shared_with(other, forged)[0] == set()
    read_back_there(True, "verify-there-2")
    passed = bake(proj, "distribute", f"sample:{VERSION}", "--json")
    assert passed.rc == 0, passed.stderr
    assert {r["region"]: r["shared"] for r in passed.json["regions"]} == {HOME: True, OTHER: True}
    assert shared_with(other, forged) == (set(ACCOUNTS), {s: set(ACCOUNTS) for s in forged_snapshots})
