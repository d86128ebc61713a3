"""The aws builder `disk`: the local version's verified raw disk, byte for byte, becomes the AMI.

Packer and Image Builder bake the AMI again on an instance, from the same roles but other bytes. This builder
publishes what passed the local gate instead: it bakes the local version (podman, cached when unchanged), makes
its raw disk, verifies it in a container and in a VM unless that already passed on exactly these bytes, and hands
the disk to bakery.builders.disk_publish, which uploads it through the EBS direct APIs and registers the AMI. The
AMI carries the local version (`bakery:version`: one version, local and on AWS) and the disk's sha256.

Before anything is uploaded: the disk must have a passed VM verification of its recorded sha256 (and the version a
passed container verification); an available AMI of the same disk is this build (reused); an AMI of this version
with other bytes, or a verification record of it already written, refuses the build (a version is one disk). The
snapshots that killed builds of this image left are removed first (bakery.gc.aws_leftovers).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from bakery.aws import amis, clients, tags, verification_record
from bakery.builders.ami import AmiBuilder, region_keys
from bakery.builders.base import BuildOptions, BuildResult
from bakery.builders.disk_publish import DiskPublish, LocalDisk, write_record
from bakery.catalog import SqliteCatalog
from bakery.config import ImageDefinition
from bakery.errors import ConfigError, OperationError
from bakery.gc import aws_leftovers
from bakery.runs import Run
from bakery.signals import cancellable
from bakery.verify.gate import latest_verification

KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+\Z")


def check_key_arn(key: str) -> None:
    """StartSnapshot takes only a key ARN (its KmsKeyArn member), not an id or alias: resolving an alias would need
    kms:DescribeKey, which the policy grants only through EC2 and EBS, so the setting must be the ARN itself."""
    if key and not KEY_ARN.match(key):
        raise ConfigError(f"bakery.yml: aws.kms_key_id '{key}' is not a key ARN; the disk builder's EBS snapshots "
                          "take the key's ARN only (arn:aws:kms:REGION:ACCOUNT:key/KEY-ID): set that, or leave it "
                          "empty for the account's default EBS key")


def taken_on_aws(region: str) -> Callable[[str, str], bool]:
    """Whether AWS already has a version (an AMI of it, or its written-once record), for the local bake to skip.

    The AMI carries the local version, and a checkout numbers its versions from its own catalog and this host's
    images: a CI job in a fresh clone (its images removed when the last job ended) would number its bake as an
    earlier job's, and the publish would then be refused (a version is one disk) every time that day."""
    ec2, ssm = clients.client("ec2", region), clients.client("ssm", region)
    return lambda image, version: verification_record.version_taken(ec2, ssm, image, version)


class DiskBuilder(AmiBuilder):

    def build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
        started = time.monotonic()
        check_key_arn(self.project.aws.kms_key_id)  # a bad setting stops before minutes of local bake and VM boots
        region = clients.resolve_region(self.project.aws.region or None)  # so do no region and no credentials
        clients.check_credentials()
        local = self.local_version(definition, options, run, taken_on_aws(region))
        result = self.publish(definition, local.version, run, started)
        result.layers = local.layers
        return result

    def local_version(self, definition: ImageDefinition, options: BuildOptions, run: Run,
                      taken: Callable[[str, str], bool] | None = None) -> BuildResult:
        """The local half: bake (cached), make the raw disk, verify it (container, then VM) unless that passed on
        these bytes already. Needs podman and qemu; the AMI half (publish) needs only the catalog it leaves.
        A new local version skips those `taken` says AWS has already (see taken_on_aws)."""
        from bakery.builders.podman import PodmanBuilder
        from bakery.disks.builder import make_disk

        catalog = self._sqlite()
        built = PodmanBuilder(self.project, catalog, self.progress, taken_elsewhere=taken).build(definition, options,
                                                                                               run)
        record = catalog.resolve(definition.name, built.version)
        disk = make_disk(self.project, catalog, self.progress, record, definition.disk, "raw",
                         definition.disk.disk_size)
        self._ensure_verified(definition.name, built.version, disk.sha256)
        return built

    def _ensure_verified(self, image: str, version: str, sha256: str) -> None:
        from bakery.verify.runner import verify_image
        from bakery.verify.vm import verify_vm_image

        container = latest_verification(self.catalog, image, version, "container")
        if not (container and container["passed"]):
            result = verify_image(self.project, self._sqlite(), self.progress, image, version, None)
            if not result.passed:
                raise OperationError(f"verification of {image}:{version} failed: {result.summary} "
                                     f"(report {result.reports['junit']}); nothing was published")
        vm = latest_verification(self.catalog, image, version, "vm")
        if not (vm and vm["passed"] and (vm.get("reports") or {}).get("disk_sha256") == sha256):
            result = verify_vm_image(self.project, self._sqlite(), self.progress, image, version, None)
            if not result.passed:
                raise OperationError(f"VM verification of {image}:{version} failed: {result.summary} "
                                     f"(report {result.reports['junit']}); nothing was published")

    def _sqlite(self) -> SqliteCatalog:
        if not isinstance(self.catalog, SqliteCatalog):
            raise ConfigError("the disk builder publishes a local version's disk: it needs the local catalog")
        return self.catalog

    # -- the AMI half ----------------------------------------------------------------------------

    def publish(self, definition: ImageDefinition, version: str, run: Run,
                started: float | None = None) -> BuildResult:
        """Publish the local version's verified disk as an AMI in the home region (or return the AMI of the same
        disk); nothing is shared here (bake.py distribute does that)."""
        started = time.monotonic() if started is None else started
        local = self.check_local(definition.name, version)
        settings = self.project.aws
        region = clients.resolve_region(settings.region or None)
        keys = region_keys(settings, region)
        check_key_arn(keys[region])
        clients.check_credentials()
        ec2 = clients.client("ec2", region)
        (run.path / "pid").write_text(str(os.getpid()), encoding="utf-8")  # a killed run's snapshots are found
        self._remove_dead_snapshots(ec2, region, definition.name)
        existing = amis.newest_available(ec2, {tags.MANAGED: "true", tags.IMAGE: definition.name,
                                               tags.DISK_SHA256: local.sha256})
        if existing:
            if verification_record.read_record(clients.client("ssm", region), local.image, local.version) is None:
                # a build killed between RegisterImage and its record: the AMI is whole (registered over a
                # completed snapshot) and the local verification of its bytes still holds
                write_record(local, region, existing, run.id)
                self.progress.note(f"{local.image}:{local.version}: wrote the missing verification record of "
                                   f"{existing['ImageId']}")
            return self.reused(existing, region, local.record.get("input_digest") or "", [], run, started)
        self._refuse_other_bytes(ec2, region, local)
        with cancellable() as cancel:
            return DiskPublish(self._sqlite(), self.progress, local, run, cancel, region=region, kms_key=keys[region],
                               started=started).go()

    def check_local(self, image: str, version: str) -> LocalDisk:
        """The version's raw disk and the passed verifications of exactly its bytes, or one line saying what to run."""
        catalog = self._sqlite()
        record = catalog.version(image, version)
        if record is None or record["status"] != "ready":
            raise OperationError(f"{image}:{version} is no ready local version; bake it with ./bake.py build {image}")
        disk = catalog.disk(image, version, "raw")
        if disk is None:
            raise OperationError(f"{image}:{version} has no raw disk; make it with ./bake.py disk {image}:{version}")
        sha = disk["sha256"]
        container = latest_verification(catalog, image, version, "container")
        if not (container and container["passed"]):
            raise OperationError(f"{image}:{version} has no passed verification; run ./bake.py verify "
                                 f"{image}:{version} first")
        vm = latest_verification(catalog, image, version, "vm")
        booted = (vm or {}).get("reports", {}).get("disk_sha256")
        if not (vm and vm["passed"] and booted == sha):
            why = ("none" if vm is None else "the last one failed" if not vm["passed"]
                   else f"the last one booted sha256 {str(booted)[:12]}")
            raise OperationError(f"{image}:{version}'s disk (sha256 {sha[:12]}) has no passed VM verification "
                                 f"({why}); run ./bake.py verify {image}:{version} --vm first")
        local = LocalDisk(record, self.project.state_dir / disk["path"], sha, container, vm)
        if not local.vm_report.is_file():
            raise OperationError(f"the report of {image}:{version}'s VM verification ({local.vm_report}) is gone; "
                                 f"run ./bake.py verify {image}:{version} --vm again")
        return local

    def _remove_dead_snapshots(self, ec2, region: str, image: str) -> None:
        """Snapshots that killed builds of this image started (their run is over) go before a new one starts."""
        dead, _ = aws_leftovers.find_snapshots(ec2, region, self.project.state_dir, image)
        deleted, failed = aws_leftovers.remove_snapshots(ec2, dead)
        for entry in dead:
            if entry.snapshot_id in deleted:
                self.progress.note(f"removed snapshot {entry.snapshot_id} ({entry.state}) in {region}: {entry.reason}")
        for problem in failed:
            self.progress.note(f"could not remove snapshot {problem['snapshot_id']}: {problem['error']}; "
                               "./bake.py gc --target aws tries again")

    @staticmethod
    def _refuse_other_bytes(ec2, region: str, local: LocalDisk) -> None:
        """A version is one disk: an AMI of it with other bytes (or none recorded), or its written-once
        verification record, means this disk cannot become that version's AMI."""
        image, version = local.image, local.version
        # with unchanged inputs a plain build reuses the local version; --no-cache numbers a new one past AWS's
        new = f"bake a new version (./bake.py build {image} --target aws --builder disk --no-cache)"
        for ami in amis.find_amis(ec2, {tags.MANAGED: "true", tags.IMAGE: image, tags.VERSION: version}):
            other = tags.from_tag_list(ami.get("Tags")).get(tags.DISK_SHA256, "")
            if other != local.sha256 and ami.get("State") not in ("failed", "deregistered"):
                held = f"disk sha256 {other[:12]}" if other else "no disk sha256: another builder made it"
                raise OperationError(f"{image}:{version} already has AMI {ami['ImageId']} in {region} ({held}), "
                                     f"not this disk's {local.sha256[:12]}: {new}")
        ssm = clients.client("ssm", region)
        if verification_record.read_record(ssm, image, version) is not None:
            raise OperationError(f"{image}:{version} already has a verification record "
                                 f"({verification_record.parameter_name(image, version)}) but no AMI of this disk; "
                                 f"records are written once: {new}")
