"""`bake.py verify IMAGE:VERSION --target aws`: the full gate for an AMI, whoever built it.

The AMI's root snapshot is read back through the EBS direct APIs (every block's checksum checked) into a local
sparse raw disk, `.bakery/disks/.readback-<run id>/<ami>.raw`. Its filesystems are scanned for secrets without
mounting (bakery.verify.disk_scan); a finding fails the verification before anything boots. Then the disk goes
through the same VM verification as `verify --vm` (bakery.verify.vm), with the target environment's runtime config
as UserData. The outcome is recorded twice: in the local catalog (kind "aws") and, write-once, in SSM in the home
region (bakery.aws.readback_record), which is what the AWS gate and `distribute` trust. The read-back disk is
removed at the end (kept with --keep-disk); a killed run's directory carries its pid and is removed by the next
`verify --target aws` and by `gc`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.catalog import SqliteCatalog
from bakery.config import ImageDefinition, Project
from bakery.disks.builder import DiskResult
from bakery.disks.layout import ESP_MOUNT, Layout
from bakery.errors import ConfigError, OperationError
from bakery.progress import Progress
from bakery.provenance import utc_now
from bakery.runs import Run
from bakery.signals import Cancellation, TimeLimitExceeded, cancellable, time_limit
from bakery.verify import disk_scan, junit, secrets
from bakery.verify.readback_dirs import KEPT, readback_dir, stale_readbacks
from bakery.verify.runner import VerifyResult
from bakery.verify.vm import VmVerifier, disk_layout

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class FoundAmi:
    """The AMI to verify in `region` (a describe_images entry) and its root snapshot."""

    region: str
    image: dict[str, Any]
    snapshot: str

    @property
    def id(self) -> str:
        return str(self.image["ImageId"])

    @property
    def tags(self) -> dict[str, str]:
        from bakery.aws import tags

        return tags.from_tag_list(self.image.get("Tags"))


def root_snapshot(image: dict[str, Any]) -> str:
    """The snapshot behind the AMI's root device ('' when its root is no EBS snapshot)."""
    root = image.get("RootDeviceName") or "/dev/xvda"
    for mapping in image.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") in (root, root.removeprefix("/dev/")) and mapping.get("Ebs", {}).get("SnapshotId"):
            return str(mapping["Ebs"]["SnapshotId"])
    return ""


def find_ami(ec2, image: str, version: str | None, region: str) -> FoundAmi:
    """image:version's newest available managed AMI in `region` (the image's newest one without a version)."""
    from bakery.aws import amis, tags

    wanted = {tags.MANAGED: "true", tags.IMAGE: image, **({tags.VERSION: version} if version else {})}
    found = amis.newest_available(ec2, wanted)
    named = f"{image}:{version}" if version else image
    if found is None:
        raise ConfigError(f"no available AMI of {named} tagged {tags.MANAGED}=true in {region}: list the versions "
                          f"there with ./bake.py images {image} --target aws, build one with ./bake.py build {image} "
                          f"--target aws, or copy one there with ./bake.py distribute {image}:VERSION --regions "
                          f"{region}")
    snapshot = root_snapshot(found)
    if not snapshot:
        raise ConfigError(f"{found['ImageId']} ({named} in {region}) has no EBS snapshot behind its root device "
                          f"{found.get('RootDeviceName', '?')}: only EBS-backed AMIs can be read back")
    others = [f"{m.get('DeviceName')} ({m['Ebs']['SnapshotId']})" for m in found.get("BlockDeviceMappings", [])
              if m.get("Ebs", {}).get("SnapshotId") and m["Ebs"]["SnapshotId"] != snapshot]
    if others:  # their bytes would go unscanned, yet every instance gets them and distribute would share them
        raise OperationError(f"{found['ImageId']} ({named} in {region}) has EBS volumes besides its root: "
                             f"{', '.join(others)}; verify --target aws reads back and scans the root volume only, "
                             "so it cannot pass such an AMI: bake it with its root volume alone")
    return FoundAmi(region, found, snapshot)


def readback_region(project: Project, env_name: str | None, region: str | None) -> str:
    """--region, else the environment's region, else bakery.yml's aws.region, else the AWS chain's; an environment
    of the local target is refused (its runtime config is not what an AMI boots with)."""
    from bakery.aws.clients import resolve_region
    from bakery.environments import load_environment

    env_region = ""
    if env_name:
        env = load_environment(project, env_name)
        if env.target != "aws":
            raise ConfigError(f"environment '{env_name}' is a {env.target} environment (inventories/{env_name}/"
                              f"group_vars/all/deploy.yml bakery_deploy.target): verify --target aws checks an AMI "
                              "for an aws environment; give one, or verify without --env")
        env_region = str(env.aws.get("region") or "")
    return resolve_region(region or env_region or project.aws.region or None)


def version_record(catalog: SqliteCatalog, definition: ImageDefinition, found: FoundAmi) -> dict[str, Any]:
    """The catalog's row of the AMI's version, else one made of its tags and today's image definition (an AMI baked
    elsewhere): what the VM verification needs (image, version, the roles whose tests run, the commit)."""
    from bakery.aws import tags

    facts = found.tags
    row = catalog.version(facts[tags.IMAGE], facts.get(tags.VERSION, ""))
    if row is not None:
        return row
    return {"image": facts[tags.IMAGE], "version": facts.get(tags.VERSION, ""), "image_ref": found.id,
            "layers": [{"role": layer.role.name} for layer in definition.layers],
            "provenance": {"git_commit": facts.get(tags.GIT_COMMIT, "")}}


def prefix_digest(path: Path, size: int) -> tuple[str, bool]:
    """(sha256 of the file's first `size` bytes, whether every byte after them is zero): a disk published to a
    snapshot of whole GiB reads back as itself followed by zeros."""
    digest, zero_tail = hashlib.sha256(), True
    with path.open("rb") as handle:
        remaining = size
        while remaining > 0 and (chunk := handle.read(min(CHUNK, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
        while zero_tail and (chunk := handle.read(CHUNK)):
            zero_tail = not chunk.strip(b"\0")
    return digest.hexdigest(), zero_tail


class AmiVerifier(VmVerifier):
    """One `verify --target aws` run of one AMI: read back, scan, then the VM verification of the read-back disk."""

    found: FoundAmi
    readback: dict[str, str]
    _started: tuple[str, float]

    def verify_ami(self, record: dict[str, Any], found: FoundAmi, definition: ImageDefinition, runtime_text: str,
                   env_name: str | None, allowlist: list[secrets.AllowEntry], keep_disk: bool) -> VerifyResult:
        self.found, self.readback, self._started = found, {}, (utc_now(), time.monotonic())
        work = readback_dir(self.project, self.run.id)
        work.mkdir(parents=True)
        (work / "pid").write_text(str(os.getpid()), encoding="utf-8")
        kept = False
        try:
            with cancellable() as cancel:
                local = self._local_disk(record)
                disk = self._read_back(record, work / f"{found.id}.raw", local, cancel)
                layout = disk_layout(disk, definition.disk)
                self._compare(record, disk, local)
                if self._scan(disk, work / "scan", definition.disk, allowlist):
                    result = self.verify_vm(record, disk, layout, runtime_text, definition.health_check, env_name)
                else:
                    self._add(junit.Check("vm-boot", False, 0.0, skipped=True,
                                          message="not run: the disk failed its secret scan"))
                    result = self._finish(record, "", 0.0, env_name, disk)
                kept = keep_disk
                return result
        finally:
            if kept:
                (work / KEPT).write_text(self.run.id, encoding="utf-8")
                (work / "pid").unlink(missing_ok=True)
                self.progress.note(f"  kept the read-back disk {work / f'{found.id}.raw'} (remove it with rm -r "
                                   f"{work})")
            else:
                shutil.rmtree(work, ignore_errors=True)

    def _local_disk(self, record: dict[str, Any]) -> dict[str, Any] | None:
        disk_of = getattr(self.catalog, "disk", None)
        return disk_of(record["image"], record["version"], "raw") if disk_of is not None else None

    def _read_back(self, record: dict[str, Any], target: Path, local: dict[str, Any] | None,
                   cancel: Cancellation) -> DiskResult:
        """The snapshot as a sparse raw disk: of the local disk's size when the AMI says it holds that disk (a size
        that is no whole GiB), else of the snapshot's whole GiB."""
        from bakery.aws import ebs_direct, tags
        from bakery.aws.clients import client
        from bakery.disks.assemble import allocated_bytes, sha256_file

        found = self.found
        self.progress.note(f"verify --target aws {record['image']}:{record['version']}: {found.id} in {found.region},"
                           f" reading back its root snapshot {found.snapshot} (run {self.run.id})")
        t = time.monotonic()
        size = local["bytes"] if local is not None and found.tags.get(tags.DISK_SHA256) == local["sha256"] else None
        got = ebs_direct.read_snapshot(client("ebs", found.region), found.snapshot, target, progress=self.progress,
                                       cancel=cancel, size=size)
        digest = sha256_file(target)
        details = self._disk_details(digest)
        self.readback = {"ami": found.id, "region": found.region, "snapshot": found.snapshot, "disk_sha256": digest,
                         "readback_bytes": str(got.bytes), "readback_blocks": str(got.blocks),
                         "readback_seconds": f"{got.seconds:.1f}"}
        self._add(junit.Check("readback", True, time.monotonic() - t,
                              output=f"{got.blocks} blocks, {got.bytes} bytes of {found.snapshot} in {got.seconds:.1f}"
                                     f" s into a {got.size}-byte sparse disk, sha256 {digest}"))
        return DiskResult(record["image"], record["version"], "raw", target, digest, got.size, allocated_bytes(target),
                          False, time.monotonic() - t, details)

    def _disk_details(self, digest: str) -> dict[str, Any]:
        """The partitions of a local disk with these very bytes, when the catalog has one (any version)."""
        disks = getattr(self.catalog, "disks", None)
        rows = [row for row in (disks() if disks is not None else []) if row["sha256"] == digest]
        return rows[0]["details"] if rows else {}

    def _compare(self, record: dict[str, Any], disk: DiskResult, local: dict[str, Any] | None) -> None:
        """Is the AMI the local disk of its version, byte for byte? Told always; a failure only when the AMI claims
        a disk (the disk builder's tag) and holds other bytes."""
        from bakery.aws import tags

        t = time.monotonic()
        claimed = self.found.tags.get(tags.DISK_SHA256, "")
        same, how = False, "the catalog has no local disk of this version"
        if local is not None:
            same = disk.sha256 == local["sha256"]
            how = "byte for byte"
            if not same and disk.bytes > local["bytes"]:
                prefix, zero_tail = prefix_digest(disk.path, local["bytes"])
                same = prefix == local["sha256"] and zero_tail
                how = f"followed by {disk.bytes - local['bytes']} zero bytes (the snapshot's whole GiB)"
            self.readback.update(local_disk_sha256=local["sha256"], matches_local_disk="yes" if same else "no")
        if claimed and claimed != disk.sha256 and not (same and claimed == (local or {}).get("sha256")):
            self._add(junit.Check("ami-disk", False, time.monotonic() - t,
                                  f"{self.found.id} is tagged {tags.DISK_SHA256}={claimed} but its snapshot reads "
                                  f"back as sha256 {disk.sha256}"))
            return
        said = f"the local disk of {record['image']}:{record['version']}"
        if local is None:
            output = how
        elif same:
            output = f"the AMI holds {said} ({how})"
        else:
            output = (f"the AMI is not {said} (sha256 {local['sha256']}): it was made from other bytes (Packer, "
                      "Image Builder, or another bake)")
        self._add(junit.Check("ami-disk", True, time.monotonic() - t, output=output))

    def _scan(self, disk: DiskResult, work: Path, layout: Layout, allowlist: list[secrets.AllowEntry]) -> bool:
        """The `secrets` check over every partition; True when it passed (and the disk may boot)."""
        from bakery.verify.runner import scan_timeout

        t = time.monotonic()
        by_uuid = {str(p["uuid"]).upper(): p["mount"] for p in disk.details.get("partitions", []) if p.get("uuid")}
        by_label = {"root": "/", "esp": ESP_MOUNT, **{p.name: p.mount for p in layout.all}}
        work.mkdir()
        try:
            with time_limit(scan_timeout()):
                scan = disk_scan.scan_disk(disk.path, work, allowlist, by_uuid=by_uuid, by_label=by_label)
        except (OperationError, TimeLimitExceeded) as error:
            self._add(junit.Check("secrets", False, time.monotonic() - t, f"could not scan the disk: {error}"))
            return False
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (self.run.path / "secrets.json").write_text(json.dumps(scan.to_dict(), indent=2), encoding="utf-8")
        problems = [f"{secrets.printable(f.path)}{f':{f.line}' if f.line else ''} ({f.rule}; {f.layer})"
                    for f in scan.findings] + [p.error for p in scan.failures]
        if problems:
            message = "; ".join(problems[:10]) + (f" and {len(problems) - 10} more" if len(problems) > 10 else "")
            self._add(junit.Check("secrets", False, time.monotonic() - t, message,
                                  "\n".join(f.text() for f in scan.findings)))
            return False
        read = [f"{p.partition.describe(p.mount)} {p.filesystem}: {p.files} files" for p in scan.partitions]
        self._add(junit.Check("secrets", True, time.monotonic() - t, output="; ".join(read)))
        return True

    def _finish(self, record: dict[str, Any], started_at: str, started: float, env_name: str | None,
                disk: DiskResult) -> VerifyResult:
        """The run's outcome as kind "aws" (timed from the read-back on), then its write-once SSM record."""
        reports = {**self.readback, "console": str(self.run.path / "vm-online" / "console.log"),
                   "secrets": str(self.run.path / "secrets.json")}
        result = self._record(record, *self._started, env_name, "aws", reports)
        result.reports["record"] = self._write_record(record, result, env_name)
        return result

    def _write_record(self, record: dict[str, Any], result: VerifyResult, env_name: str | None) -> str:
        from bakery.aws import readback_record
        from bakery.aws.adopt import home_ssm

        report_sha256 = hashlib.sha256(Path(result.reports["junit"]).read_bytes()).hexdigest()
        return readback_record.write(home_ssm(self.project.aws), image=record["image"], version=record["version"],
                                     region=self.found.region, ami=self.found.id,
                                     snapshots=sorted(set(_snapshots(self.found.image))),
                                     disk_sha256=self.readback["disk_sha256"], passed=result.passed,
                                     report_sha256=report_sha256, summary=result.summary, run_id=self.run.id,
                                     env=env_name or "")


def _snapshots(image: dict[str, Any]) -> list[str]:
    from bakery.aws import amis

    return amis.snapshot_ids(image)


def verify_ami_image(project: Project, catalog: SqliteCatalog, progress: Progress, image: str, version: str | None,
                     *, env_name: str | None = None, region: str | None = None,
                     keep_disk: bool = False) -> VerifyResult:
    """Everything that can refuse the request (environment, region, tools, credentials, the AMI) is checked before
    the run starts."""
    from bakery.aws.clients import check_credentials, client
    from bakery.disks import accel, qemu_host, vm_leftovers
    from bakery.verify.runner import ALLOWLIST_FILE, runtime_text
    from bakery.verify.vm_ssh import require_client

    definition = project.image(image)
    where = readback_region(project, env_name, region)
    text = runtime_text(project, env_name, params="off")  # the read-back VM never gets the environment's secrets
    allowlist = secrets.load_allowlist(project.root / ALLOWLIST_FILE)
    for command, package in (("sfdisk", "fdisk"), ("debugfs", "e2fsprogs"), ("mcopy", "mtools")):
        qemu_host.command(command, package)
    qemu_host.qemu_system(), qemu_host.qemu_img(), qemu_host.firmware()
    accel.choose()
    require_client()
    check_credentials()
    found = find_ami(client("ec2", where), image, version, where)
    record = version_record(catalog, definition, found)
    for leftover in stale_readbacks(project):
        progress.note(f"removing {leftover}: the read-back disk of a verify that was killed")
        shutil.rmtree(leftover, ignore_errors=True)
    vm_leftovers.clean(project.state_dir / "runs")
    run = Run.start(project.state_dir, "verify-aws")
    return AmiVerifier(project, catalog, progress, run).verify_ami(record, found, definition, text, env_name,
                                                                   allowlist, keep_disk)


def ensure_ami_verified(project: Project, catalog: SqliteCatalog, progress: Progress, image: str, version: str,
                        env_name: str, force: bool = False) -> str:
    """For the pipeline: the AMI's passing read-back verification, reused when its newest record (or, for a copy
    distribute recorded, its source's) passes, unless `force`; else `verify --target aws` runs now."""
    from bakery.aws import readback_record
    from bakery.aws.adopt import home_ssm
    from bakery.aws.clients import client

    where = readback_region(project, env_name, None)
    found = find_ami(client("ec2", where), image, version, where)
    passed, summary = readback_record.verdict(home_ssm(project.aws), found.image, where)
    if passed and not force:
        return f"{found.id} passed verify --target aws ({summary}); not repeated"
    result = verify_ami_image(project, catalog, progress, image, version, env_name=env_name, region=where)
    if not result.passed:
        raise OperationError(f"verify --target aws of {image}:{version} ({found.id}) failed: {result.summary} "
                             f"(report {result.reports['junit']})")
    return f"{found.id} passed verify --target aws in {result.seconds:.0f} s"
