"""One disk publish from upload to registered AMI: EBS snapshot through the direct APIs, then RegisterImage.

DiskBuilder (bakery.builders.disk) decides whether to publish at all; once it does, a DiskPublish owns the
snapshot it starts and the AMI it registers, so that a failure or an interrupt removes exactly what this run made.

Order matters for a kill -9 at any point: the snapshot is started tagged with this run (bakery:run) and the
disk's provenance, its blocks are sent, CompleteSnapshot is called and the snapshot is waited for until
`completed` (bakery.aws.ebs_direct.publish), and only then is the AMI registered. So no AMI ever stands over a
partial snapshot; a killed run leaves at most an AMI-less snapshot, which the next build of the image and
`gc --target aws` remove (bakery.gc.aws_leftovers.find_snapshots). The upload is incremental: when an earlier
AMI of the image was made from a disk whose block map the catalog keeps, its root snapshot is the parent and only
the blocks that differ are sent. Nothing is shared and nothing is copied to other regions here: that is
`bake.py distribute`, after the AMI is verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from bakery.aws import amis, clients, ebs_direct, tags, verification_record
from bakery.aws.disk_blocks import BlockMap, block_map
from bakery.aws.distribute import RegionResult, tag_missing
from bakery.builders.base import BuildResult
from bakery.catalog import SqliteCatalog
from bakery.disks.assemble import sha256_file
from bakery.errors import OperationError
from bakery.progress import Progress
from bakery.provenance import Provenance, sanitize_tag_value
from bakery.runs import Run
from bakery.signals import Cancellation

log = logging.getLogger("bakery.build")

ROOT_DEVICE = "/dev/xvda"
ARCHITECTURE = "x86_64"  # bakery's disks are amd64 (systemd-boot x64, linux-image-cloud-amd64)


@dataclass
class LocalDisk:
    """The local version to publish: its catalog row, its raw disk, and the verifications that passed on it."""

    record: dict[str, Any]
    path: Path
    sha256: str
    container: dict[str, Any]
    vm: dict[str, Any]

    @property
    def image(self) -> str:
        return self.record["image"]

    @property
    def version(self) -> str:
        return self.record["version"]

    @property
    def vm_report(self) -> Path:
        return Path(self.vm["reports"]["junit"])


class DiskPublish:
    """One upload and registration in progress; owns this run's snapshot and AMI until done."""

    def __init__(self, catalog: SqliteCatalog, progress: Progress, local: LocalDisk, run: Run, cancel: Cancellation,
                 *, region: str, kms_key: str, started: float):
        self.catalog = catalog
        self.progress = progress
        self.local = local
        self.run = run
        self.cancel = cancel
        self.region = region
        self.kms_key = kms_key
        self.started = started
        self.ami_name = f"{local.image}-{local.version}-{run.id.rsplit('-', 1)[-1]}"

    def go(self) -> BuildResult:
        succeeded = False
        try:
            result = self._publish()
            succeeded = True
            return result
        finally:
            if not succeeded:
                self._undo()

    def _publish(self) -> BuildResult:
        ec2, ebs = clients.client("ec2", self.region), clients.client("ebs", self.region)
        blocks = self._block_map()
        parent_snapshot, parent_blocks = self._parent(ec2)
        wanted = self.resource_tags()
        step = f"publish {self.local.image}:{self.local.version}"
        self.progress.step_start(step, f"{len(blocks.digests)} blocks of 512 KiB to EBS in {self.region}"
                                         + (f" on top of {parent_snapshot}" if parent_snapshot else ""))
        published = ebs_direct.publish(
            ebs, ec2, self.local.path, blocks, tags=wanted, kms_key=self.kms_key,
            description=f"{self.local.image} {self.local.version} disk sha256 {self.local.sha256[:12]} (bakery)",
            client_token=self.run.id[-64:], parent_snapshot=parent_snapshot, parent_blocks=parent_blocks,
            progress=self.progress, cancel=self.cancel)
        self.progress.step_done(step, f"{published.blocks_sent} of {published.blocks_total} blocks sent "
                                        f"({published.bytes_sent >> 20} MiB) in {published.seconds:.1f} s")
        self.cancel.check()
        image = self._register(ec2, published.snapshot_id, wanted)
        self.cancel.check()
        self._write_record(image)
        version = self.local.version
        self.progress.note(f"{self.local.image}:{version}: {image['ImageId']} in {self.region} "
                             f"(snapshot {published.snapshot_id}); not shared: verify it with ./bake.py verify "
                             f"{self.local.image}:{version} --target aws, then ./bake.py distribute")
        return BuildResult(image=self.local.image, version=version, ref=image["ImageId"], image_id=image["ImageId"],
                           input_digest=self.local.record.get("input_digest") or "", reused=False,
                           run_id=self.run.id, seconds=round(time.monotonic() - self.started, 3), layers=[],
                           provenance={**self.local.record.get("provenance", {}), "amis": {self.region:
                                                                                           image["ImageId"]}})

    # -- what is sent ----------------------------------------------------------------------------

    def _block_map(self) -> BlockMap:
        """The disk's block map, after checking the file still holds the bytes that passed the VM verification."""
        have = sha256_file(self.local.path)
        if have != self.local.sha256:
            raise OperationError(f"{self.local.path} has sha256 {have[:12]}, not the {self.local.sha256[:12]} the "
                                 "catalog records and the VM verification booted: make the disk again with "
                                 f"./bake.py disk {self.local.image}:{self.local.version} and verify it with --vm")
        catalog = self.catalog
        kept = catalog.disk_blocks(self.local.sha256)
        if kept is not None:
            return BlockMap(size=kept["size"], digests=kept["digests"])
        blocks = block_map(self.local.path)
        catalog.record_disk_blocks(self.local.sha256, size=blocks.size, digests=blocks.digests)
        return blocks

    def _parent(self, ec2) -> tuple[str, BlockMap | None]:
        """The root snapshot of the newest available AMI of this image whose disk's block map the catalog keeps,
        with that map ('', None: a cold upload)."""
        catalog = self.catalog
        for image in amis.find_amis(ec2, {tags.MANAGED: "true", tags.IMAGE: self.local.image}):
            sha = tags.from_tag_list(image.get("Tags")).get(tags.DISK_SHA256)
            kept = catalog.disk_blocks(sha) if sha and image.get("State") == "available" else None
            root = next((m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
                         if m.get("DeviceName") == image.get("RootDeviceName") and m.get("Ebs", {}).get("SnapshotId")),
                        "")
            if kept is not None and root:
                return root, BlockMap(size=kept["size"], digests=kept["digests"])
        return "", None

    def resource_tags(self) -> dict[str, str]:
        """The snapshot's and the AMI's tags: provenance, this run, the disk's sha256 and the local verifications."""
        known = {f.name for f in dataclasses.fields(Provenance)}
        recorded = {k: v for k, v in (self.local.record.get("provenance") or {}).items() if k in known}
        provenance = Provenance(**{"image": self.local.image, "version": self.local.version, "git_commit": "",
                                   "git_message": "", "git_branch": "", "git_dirty": False, "build_time": "",
                                   "base_image": "", "base_digest": "", "input_digest": "", "bakery_version": "",
                                   "roles": {}, **recorded})
        vm, container = self.local.vm, self.local.container
        verified = f"vm passed {vm['run_id']}; container passed {container['run_id']}"
        return {**tags.provenance_tags(provenance), tags.RUN: sanitize_tag_value(self.run.id),
                tags.DISK_SHA256: self.local.sha256, tags.BUILDER: "disk",
                tags.LOCAL_VERIFICATION: sanitize_tag_value(verified)}

    # -- the AMI ---------------------------------------------------------------------------------

    def _register(self, ec2, snapshot: str, wanted: dict[str, str]) -> dict[str, Any]:
        """Register the AMI over the completed snapshot, wait until it is available, and make sure it and its
        snapshots carry every tag (RegisterImage tags only the AMI, and an endpoint may ignore even that)."""
        try:
            answer = ec2.register_image(
                Name=self.ami_name, Architecture=ARCHITECTURE, BootMode="uefi", EnaSupport=True, ImdsSupport="v2.0",
                Description=f"{self.local.image} {self.local.version} disk sha256 {self.local.sha256[:12]} (bakery)",
                RootDeviceName=ROOT_DEVICE, VirtualizationType="hvm",
                BlockDeviceMappings=[{"DeviceName": ROOT_DEVICE, "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3",
                                                                         "DeleteOnTermination": True}}],
                TagSpecifications=[{"ResourceType": "image", "Tags": tags.as_tag_list(wanted)}])
        except ClientError as exc:
            raise OperationError(f"RegisterImage of {self.ami_name} over {snapshot} failed: {exc}; the build removes "
                                 "its snapshot: build again") from exc
        image = amis.wait_until_visible(ec2, answer["ImageId"])
        entry = RegionResult(region=self.region, ami_id=image["ImageId"], snapshots=amis.snapshot_ids(image))
        tag_missing(ec2, entry, image, wanted)
        return amis.describe_ami(ec2, image["ImageId"]) or image

    def _write_record(self, image: dict[str, Any]) -> None:
        write_record(self.local, self.region, image, self.run.id)

    # -- the undo --------------------------------------------------------------------------------

    def _undo(self) -> None:
        """Nothing half-made stays: the AMI this run registered (by run tag or its unique name) and every snapshot
        this run started; never another run's."""
        try:
            ec2 = clients.client("ec2", self.region)
            run_tag = sanitize_tag_value(self.run.id)
            found = {i["ImageId"]: i for i in amis.find_amis(ec2, {tags.RUN: run_tag})}
            found.update({i["ImageId"]: i for i in amis.owned_named(ec2, self.ami_name)})
            for ami, image in sorted(found.items()):
                amis.claim(ec2, image, run_tag)
                amis.deregister_with_snapshots(ec2, ami)
                self.progress.note(f"deregistered {ami} in {self.region} (and its snapshots): the build did not "
                                     "finish")
            for snapshot in ebs_direct.run_snapshots(ec2, self.run.id):
                try:
                    ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "InvalidSnapshot.NotFound":
                        raise
                self.progress.note(f"deleted snapshot {snapshot['SnapshotId']} in {self.region}: the build did "
                                     "not finish")
        except Exception as exc:  # noqa: BLE001 - the failure that brought us here is the one to report
            log.error("could not clean up after publishing %s:%s: %s", self.local.image, self.local.version, exc)
            self.progress.note(f"could not remove what this build made ({exc}); run ./bake.py gc --target aws")


def write_record(local: LocalDisk, region: str, image: dict[str, Any], run_id: str) -> None:
    """The local verification of these bytes as the version's write-once record (what adopt trusts): passed, the
    AMI and its snapshots, the digest of the VM verification's JUnit report."""
    vm, container = local.vm, local.container
    summary = (f"disk builder: the AMI holds exactly the disk (sha256 {local.sha256}) that passed the local VM "
               f"verification (run {vm['run_id']}: {vm['summary']}) and the container verification "
               f"(run {container['run_id']}: {container['summary']})")
    verification_record.write_record(
        clients.client("ssm", region), image=local.image, version=local.version, passed=True,
        amis={region: image["ImageId"]}, snapshots={region: amis.snapshot_ids(image)},
        report_sha256=hashlib.sha256(local.vm_report.read_bytes()).hexdigest(), summary=summary, run_id=run_id)
