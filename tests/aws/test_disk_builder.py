"""The disk builder against moto server: the local version's verified raw disk becomes the AMI through the EBS
direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot), registered only once its snapshot is complete.

The local half (bake with podman, make the disk, verify it in a container and a VM) needs podman and qemu; here the
catalog is prepared instead, through the catalog's own API: a ready version, a small sparse raw disk file (a few
data blocks, the rest holes) recorded as its disk, and passed container and VM verification rows whose VM row names
that disk's sha256 and whose JUnit reports exist. Everything after that (DiskBuilder.publish) runs for real against
moto. moto 5.2.5's RegisterImage keeps only the AMI's name (its mapping, tags and attributes are dropped), so what
the builder asked EC2 for is read from the requests it sent.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from botocore.exceptions import ClientError

from bakery.aws import clients, tags, verification_record
from bakery.builders.base import BuildOptions
from bakery.builders.disk import DiskBuilder
from bakery.catalog import open_catalog
from bakery.config import Project
from bakery.errors import ConfigError, OperationError
from bakery.gc import aws_leftovers
from bakery.progress import Progress
from bakery.runs import Run
from tests.aws.test_amis import register_ami
from tests.conftest import bake

pytestmark = pytest.mark.aws

IMAGE = "sample"
BLOCK = 512 * 1024
DISK_BYTES = 4 * 1024 * 1024  # 8 blocks of 512 KiB


class Calls:
    """What bakery's clients asked AWS (botocore's parameters, before they are sent), by operation; `fail` makes one
    operation fail as AWS would refuse it."""

    def __init__(self):
        self.made: dict[str, list[dict]] = {}
        self.fail: set[str] = set()

    def attach(self, made):
        service = made.meta.service_model.service_name
        made.meta.events.register(f"before-parameter-build.{service}", self._seen)
        return made

    def _seen(self, params, model, **_):
        if model.name in self.fail:
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": "refused by the test"}},
                              model.name)
        self.made.setdefault(model.name, []).append(dict(params))

    def __getitem__(self, operation: str) -> list[dict]:
        return self.made.get(operation, [])

    def clear(self):
        self.made.clear()


@pytest.fixture
def calls(monkeypatch, aws) -> Calls:
    recorder = Calls()
    real = clients.client
    monkeypatch.setattr(clients, "client", lambda *a, **kw: recorder.attach(real(*a, **kw)))
    return recorder


@pytest.fixture
def disk_project(project: Path, aws) -> Project:
    settings = yaml.safe_load((project / "bakery.yml").read_text()) or {}
    settings["aws"] = {"region": "us-east-1", "builder": "disk"}
    (project / "bakery.yml").write_text(yaml.safe_dump(settings))
    return Project(project)


def write_disk(path: Path, blocks: dict[int, bytes]) -> str:
    """A sparse raw disk of DISK_BYTES with data only in `blocks` (index -> one byte repeated); its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.truncate(DISK_BYTES)
        for index, fill in blocks.items():
            out.seek(index * BLOCK + 4096)  # data inside the block, the rest of it a hole
            out.write(fill * 8192)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_version(project: Project, catalog, blocks: dict[int, bytes], *, vm_sha: str | None = None,
                  vm_passed: bool = True) -> tuple[str, str]:
    """A ready local version with its raw disk and passed container and VM verifications (of `vm_sha`, by default
    the disk's own); returns (version, disk sha256)."""
    version = catalog.reserve_version(IMAGE, "20261203T000000Z-build-aaaaaa", os.getpid())
    catalog.complete_version(IMAGE, version, image_ref=f"localhost/bakery/{IMAGE}:{version}", image_id="sha256:img",
                             input_digest=f"sha256:in-{version}",
                             provenance={"image": IMAGE, "version": version, "git_commit": "c0ffee" * 6,
                                         "git_message": "test", "git_branch": "main", "git_dirty": False,
                                         "build_time": "2026-12-03T00:00:00Z", "base_image": "localhost/base",
                                         "base_digest": "sha256:base", "input_digest": f"sha256:in-{version}",
                                         "bakery_version": "test", "roles": {"hello": "sha256:r1"}, "artifacts": {}},
                             layers=[])
    disk = project.state_dir / "disks" / IMAGE / f"{version}.raw"
    sha = write_disk(disk, blocks)
    catalog.record_disk(IMAGE, version, disk_format="raw", path=str(disk.relative_to(project.state_dir)), sha256=sha,
                        size=DISK_BYTES, allocated=len(blocks) * BLOCK, run_id="disk-run", details={})
    for kind in ("container", "vm"):
        report = project.state_dir / "runs" / f"verify-{kind}-{version}" / "junit.xml"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(f"<testsuite name='verify {kind} {version}' tests='3' failures='0'/>")
        reports = {"junit": str(report), **({"disk_sha256": vm_sha or sha} if kind == "vm" else {})}
        catalog.record_verification(IMAGE, version, env=None, started="2026-12-03T00:10:00Z", seconds=5.0,
                                    passed=kind == "container" or vm_passed, run_id=f"verify-{kind}-{version}",
                                    summary="all checks passed", reports=reports, kind=kind)
    return version, sha


def publish(project: Project, catalog, version: str):
    builder = DiskBuilder(project, catalog, Progress(io.StringIO()))
    run = Run.start(project.state_dir, "build")
    return builder.publish(project.image(IMAGE), version, run), run


def own_snapshots() -> list[dict]:
    """bakery's snapshots (moto's built-in AMIs come with 1300 snapshots of the same owner)."""
    return clients.client("ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{tags.MANAGED}", "Values": ["true"]}])["Snapshots"]


def own_amis() -> list[dict]:
    return clients.client("ec2").describe_images(Owners=["self"])["Images"]


def test_a_cold_publish_registers_a_uefi_imdsv2_gp3_ami_tagged_with_the_disk_after_its_snapshot_completed(
        disk_project, calls):
    catalog = open_catalog(disk_project.state_dir)
    version, sha = local_version(disk_project, catalog, {0: b"a", 2: b"b", 5: b"c"})
    result, run = publish(disk_project, catalog, version)

    assert not result.reused and result.version == version
    [start] = calls["StartSnapshot"]
    assert start["VolumeSize"] == 1 and start["Encrypted"] is True and "ParentSnapshotId" not in start
    assert len(calls["PutSnapshotBlock"]) == 3  # the three data blocks; the five holes are never sent
    assert sorted(p["BlockIndex"] for p in calls["PutSnapshotBlock"]) == [0, 2, 5]
    [register] = calls["RegisterImage"]
    assert (register["BootMode"], register["ImdsSupport"], register["EnaSupport"]) == ("uefi", "v2.0", True)
    assert register["Architecture"] == "x86_64" and register["RootDeviceName"] == "/dev/xvda"
    [mapping] = register["BlockDeviceMappings"]
    assert mapping["Ebs"]["VolumeType"] == "gp3" and mapping["Ebs"]["DeleteOnTermination"] is True
    snapshot = mapping["Ebs"]["SnapshotId"]
    assert snapshot.startswith("snap-")
    assert not calls["ModifyImageAttribute"] and not calls["ModifySnapshotAttribute"]  # nothing shared in a build
    order = list(calls.made)
    assert order.index("CompleteSnapshot") < order.index("RegisterImage")

    [ami] = own_amis()
    assert ami["ImageId"] == result.image_id and ami["BootMode"] == "uefi"  # what moto reports of what it keeps
    found = tags.from_tag_list(ami["Tags"])
    assert found[tags.DISK_SHA256] == sha and found[tags.VERSION] == version and found[tags.BUILDER] == "disk"
    assert found[tags.MANAGED] == "true" and found[tags.RUN] == run.id and "vm passed" in found[tags.LOCAL_VERIFICATION]
    started = next(s for s in own_snapshots() if s["SnapshotId"] == snapshot)
    assert tags.from_tag_list(started["Tags"])[tags.DISK_SHA256] == sha
    record = verification_record.read_record(clients.client("ssm"), IMAGE, version)
    assert record["passed"] is True and record["amis"] == {"us-east-1": ami["ImageId"]}
    report = Path(catalog.verifications(IMAGE, version)[0]["reports"]["junit"])
    assert record["report_sha256"] == hashlib.sha256(report.read_bytes()).hexdigest()
    assert catalog.disk_blocks(sha)["digests"].keys() == {0, 2, 5}


def test_a_second_build_of_the_same_disk_reuses_its_ami_without_uploading(disk_project, calls):
    catalog = open_catalog(disk_project.state_dir)
    version, _ = local_version(disk_project, catalog, {0: b"a", 3: b"d"})
    first, _ = publish(disk_project, catalog, version)
    calls.clear()
    again, _ = publish(disk_project, catalog, version)
    assert again.reused and again.image_id == first.image_id
    assert not calls["StartSnapshot"] and not calls["PutSnapshotBlock"] and not calls["RegisterImage"]
    assert len(own_amis()) == 1


def test_a_build_killed_after_registering_gets_its_record_written_by_the_next_one(disk_project, calls):
    catalog = open_catalog(disk_project.state_dir)
    version, _ = local_version(disk_project, catalog, {0: b"a"})
    first, _ = publish(disk_project, catalog, version)
    ssm = clients.client("ssm")
    ssm.delete_parameter(Name=verification_record.parameter_name(IMAGE, version))  # as if killed before the record
    again, run = publish(disk_project, catalog, version)
    assert again.reused and again.image_id == first.image_id
    record = verification_record.read_record(ssm, IMAGE, version)
    assert record["passed"] is True and record["amis"] == {"us-east-1": first.image_id} and record["run_id"] == run.id


def test_a_version_differing_in_one_block_is_published_on_top_of_the_earlier_snapshot(disk_project, calls):
    catalog = open_catalog(disk_project.state_dir)
    old, _ = local_version(disk_project, catalog, {0: b"a", 2: b"b", 5: b"c", 7: b"z"})
    cold, _ = publish(disk_project, catalog, old)
    [parent_ami] = own_amis()
    parent = parent_ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    calls.clear()
    new, _ = local_version(disk_project, catalog, {0: b"a", 2: b"B", 5: b"c"})  # block 2 changed, block 7 gone
    result, _ = publish(disk_project, catalog, new)

    [start] = calls["StartSnapshot"]
    assert start["ParentSnapshotId"] == parent
    sent = {p["BlockIndex"]: p for p in calls["PutSnapshotBlock"]}
    assert sorted(sent) == [2, 7]  # the changed block, and zeros where the earlier disk had data
    assert sent[7]["BlockData"] == bytes(BLOCK)
    assert result.image_id != cold.image_id and len(own_amis()) == 2


def test_a_failure_after_the_snapshot_started_leaves_no_ami_and_no_snapshot(disk_project, calls):
    catalog = open_catalog(disk_project.state_dir)
    version, _ = local_version(disk_project, catalog, {1: b"x", 4: b"y"})
    calls.fail.add("RegisterImage")
    with pytest.raises(OperationError, match="RegisterImage"):
        publish(disk_project, catalog, version)
    assert calls["StartSnapshot"] and calls["CompleteSnapshot"]
    assert own_amis() == [] and own_snapshots() == []
    assert verification_record.read_record(clients.client("ssm"), IMAGE, version) is None
    assert catalog.version(IMAGE, version)["status"] == "ready"  # the local version stays what it was


@pytest.mark.parametrize("vm_sha, vm_passed", [("ff" * 32, True), (None, False)])
def test_a_disk_without_a_passed_vm_verification_of_its_bytes_is_refused_with_one_line(disk_project, calls, vm_sha,
                                                                                        vm_passed):
    catalog = open_catalog(disk_project.state_dir)
    version, sha = local_version(disk_project, catalog, {0: b"a"}, vm_sha=vm_sha, vm_passed=vm_passed)
    with pytest.raises(OperationError) as refused:
        publish(disk_project, catalog, version)
    message = str(refused.value)
    assert "\n" not in message and f"./bake.py verify {IMAGE}:{version} --vm" in message and sha[:12] in message
    assert not calls["StartSnapshot"] and own_amis() == []


def test_a_version_that_has_an_ami_of_other_bytes_is_refused(disk_project, calls):
    catalog = open_catalog(disk_project.state_dir)
    version, _ = local_version(disk_project, catalog, {0: b"a"})
    other = register_ami(clients.client("ec2"), f"{IMAGE}-{version}-packer",
                         {tags.MANAGED: "true", tags.IMAGE: IMAGE, tags.VERSION: version})
    with pytest.raises(OperationError, match=f"{IMAGE}:{version} already has AMI {other}") as refused:
        publish(disk_project, catalog, version)
    assert str(refused.value).endswith(f"bake a new version (./bake.py build {IMAGE} --target aws --builder disk "
                                       "--no-cache)")
    assert not calls["StartSnapshot"]


def earlier_jobs_versions(catalog) -> tuple[str, str, str]:
    """What AWS holds after two earlier jobs' bakes of IMAGE today: an AMI of the first number a fresh catalog hands
    out, the record (its AMIs since removed) of the second, and another image's AMI of the third."""
    ec2, ssm = clients.client("ec2"), clients.client("ssm")
    today = catalog.reserve_version(IMAGE, "probe", os.getpid())
    catalog.discard_version(IMAGE, today)
    day, first = today.split(".")
    second, third = (f"{day}.{int(first) + n:03d}" for n in (1, 2))
    register_ami(ec2, f"{IMAGE}-{today}", {tags.MANAGED: "true", tags.IMAGE: IMAGE, tags.VERSION: today})
    verification_record.write_record(ssm, image=IMAGE, version=second, passed=True,
                                     amis={"us-east-1": "ami-0123456789abcdef0"}, snapshots={"us-east-1": []},
                                     report_sha256="ab" * 32, summary="3 passed", run_id="earlier-job")
    register_ami(ec2, f"other-{today}", {tags.MANAGED: "true", tags.IMAGE: "other", tags.VERSION: third})
    return today, second, third


@pytest.fixture
def no_local_images(monkeypatch):
    """This host's podman storage has no image of any version (as on a runner whose last job's gc removed them)."""
    from bakery import podman

    monkeypatch.setattr(podman, "image_exists", lambda ref: False)


def test_a_new_local_version_skips_the_versions_aws_already_has(disk_project, calls, no_local_images):
    """A CI job in a fresh clone numbers its versions from an empty catalog: the disk builder's bake asks AWS too,
    or it would take an earlier job's version, and its publish would be refused (a version is one disk)."""
    from bakery.builders.disk import taken_on_aws
    from bakery.builders.podman import PodmanBuilder

    catalog = open_catalog(disk_project.state_dir)
    today, second, third = earlier_jobs_versions(catalog)
    calls.clear()
    taken = taken_on_aws("us-east-1")
    assert (taken(IMAGE, today), taken(IMAGE, second), taken(IMAGE, third)) == (True, True, False)
    # an AMI someone disabled (DisableImage) is left out of DescribeImages unless asked for, and can come back
    assert calls["DescribeImages"] and all(c.get("IncludeDisabled") is True for c in calls["DescribeImages"])

    builder = PodmanBuilder(disk_project, catalog, Progress(io.StringIO()), taken_elsewhere=taken)
    version = catalog.reserve_version(IMAGE, "fresh-clone", os.getpid(),
                                      taken=lambda v: builder.version_taken(IMAGE, v))
    assert version == third  # another image's AMI of that number is no reason to skip it
    local_only = PodmanBuilder(disk_project, catalog, Progress(io.StringIO()))  # the local target asks no one else
    assert not local_only.version_taken(IMAGE, today)


def test_the_disk_builders_local_bake_numbers_its_version_past_aws(disk_project, calls, no_local_images,
                                                                   monkeypatch):
    """DiskBuilder.build hands its local bake the AWS check (the bake itself is tests/integration's: here it stops
    where it would start baking, once it has asked what it would hand out)."""
    from bakery.builders.podman import PodmanBuilder

    catalog = open_catalog(disk_project.state_dir)
    today, second, third = earlier_jobs_versions(catalog)
    asked = {}

    def bake_stops_here(self, definition, options, run):
        asked.update({v: self.version_taken(definition.name, v) for v in (today, second, third)})
        raise OperationError("stopped before the bake")

    monkeypatch.setattr(PodmanBuilder, "build", bake_stops_here)
    builder = DiskBuilder(disk_project, catalog, Progress(io.StringIO()))
    with pytest.raises(OperationError, match="stopped before the bake"):
        builder.build(disk_project.image(IMAGE), BuildOptions(), Run.start(disk_project.state_dir, "build"))
    assert asked == {today: True, second: True, third: False}


def test_the_disk_builder_needs_a_region_before_it_bakes_anything(disk_project, monkeypatch):
    settings = yaml.safe_load((disk_project.root / "bakery.yml").read_text())
    settings["aws"].pop("region")
    (disk_project.root / "bakery.yml").write_text(yaml.safe_dump(settings))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    project = Project(disk_project.root)
    catalog = open_catalog(project.state_dir)
    with pytest.raises(ConfigError, match="no AWS region"):
        DiskBuilder(project, catalog, Progress(io.StringIO())).build(project.image(IMAGE), BuildOptions(),
                                                                    Run.start(project.state_dir, "build"))
    assert catalog.versions(IMAGE, status=None) == []


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def dead_run(project: Project) -> str:
    """A disk build killed with -9: its run directory names a pid that is gone."""
    run = Run.start(project.state_dir, "build")
    (run.path / "pid").write_text(str(dead_pid()))
    return run.id


def leftover_snapshot(run_id: str, image: str = IMAGE) -> str:
    """What a killed publish leaves: a started snapshot with a block or two and its run's tags, under no AMI."""
    ebs = clients.client("ebs")
    started = ebs.start_snapshot(VolumeSize=1, Encrypted=True, Tags=tags.as_tag_list(
        {tags.MANAGED: "true", tags.IMAGE: image, tags.RUN: run_id, tags.BUILDER: "disk"}))
    return started["SnapshotId"]


def test_a_build_removes_the_snapshots_of_dead_runs_of_its_image_first(disk_project, calls):
    catalog = open_catalog(disk_project.state_dir)
    dead = leftover_snapshot(dead_run(disk_project))
    live = Run.start(disk_project.state_dir, "build")
    (live.path / "pid").write_text(str(os.getpid()))
    running = leftover_snapshot(live.id)
    other_image = leftover_snapshot(dead_run(disk_project), image="other")
    version, _ = local_version(disk_project, catalog, {0: b"a"})
    publish(disk_project, catalog, version)
    left = {s["SnapshotId"] for s in own_snapshots()}
    assert dead not in left and running in left and other_image in left


def test_gc_finds_and_removes_a_leftover_snapshot_of_a_dead_run_only(disk_project, calls):
    dead_id = dead_run(disk_project)
    dead = leftover_snapshot(dead_id)
    live = Run.start(disk_project.state_dir, "build")
    (live.path / "pid").write_text(str(os.getpid()))
    running = leftover_snapshot(live.id)
    ec2 = clients.client("ec2")
    remove, keep = aws_leftovers.find_snapshots(ec2, "us-east-1", disk_project.state_dir)
    assert [e.snapshot_id for e in remove] == [dead] and remove[0].run_id == dead_id
    assert [e.snapshot_id for e in keep] == [running] and "still running" in keep[0].reason
    deleted, failed = aws_leftovers.remove_snapshots(ec2, remove)
    assert deleted == [dead] and failed == []
    assert {s["SnapshotId"] for s in own_snapshots()} == {running}


@pytest.mark.parametrize("key", ["alias/bakery-ami", "1234abcd-12ab-34cd-56ef-1234567890ab"])
def test_a_key_that_is_not_an_arn_is_refused_before_anything_is_baked_or_uploaded(project: Path, aws, calls, key):
    settings = yaml.safe_load((project / "bakery.yml").read_text()) or {}
    settings["aws"] = {"region": "us-east-1", "builder": "disk", "kms_key_id": key}
    (project / "bakery.yml").write_text(yaml.safe_dump(settings))
    out = bake(project, "build", IMAGE, "--target", "aws", "--builder", "disk")
    assert out.rc == 2, out.stderr
    assert f"aws.kms_key_id '{key}' is not a key ARN" in out.stderr and "Traceback" not in out.stderr
    assert not calls["StartSnapshot"] and not own_snapshots()
