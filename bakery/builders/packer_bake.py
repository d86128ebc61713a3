"""One Packer bake from reservation to ready version: Packer's inputs, the run, the AMIs' checks and tags, the undo.

PackerBuilder (bakery.builders.packer) decides whether to bake at all; once it
does, a PackerBake owns the version it reserved and every AMI the run registers,
so that a failure or an interrupt removes exactly what this run made and no
other bake's AMI of the same version.

Packer only launches, images and tags, in the home region; bakery sets every AMI
attribute itself afterwards (ImdsSupport, Description), on AMIs and snapshots
already tagged bakery:managed=true, which is all the shipped IAM policy lets
the role modify. Nothing is shared with aws.accounts here: the bake's in-build
test is no gate, so only `bake.py distribute` shares, once the version passed
`bake.py verify --target aws`.
Packer 1.6.6 would do it the other way round (see packer/aws.pkr.hcl). For the
same reason the undo claims an AMI this run registered but Packer never tagged
before removing it. bakery also copies the tagged home AMI to aws.regions itself
(bakery.aws.distribute's copy calls: tagged on creation, each region's key), as
Packer 1.6.6 would copy without tags and, with per-region keys, through an
untagged intermediate AMI it removes itself. The verification record is written
once every copy is available, naming the AMI and snapshots of every region.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery import __version__
from bakery.ansible import ansible_env
from bakery.aws import amis, clients, distribute, tags, verification_record
from bakery.aws.distribute import RegionResult
from bakery.builders.ami import AmiBuilder
from bakery.builders.base import BuildResult, LayerResult
from bakery.builders.packer_run import parse_manifest, read_junit, stream_packer
from bakery.config import ImageDefinition
from bakery.errors import OperationError
from bakery.layers import PlannedLayer
from bakery.provenance import Provenance, git_facts, sanitize_tag_value, utc_now
from bakery.role_paths import baked_roles
from bakery.runs import Run
from bakery.signals import Cancellation

log = logging.getLogger("bakery.build")

TESTINFRA_SCRIPT = Path("packer") / "testinfra.sh"
# Packer 1.6.6's SSH adapter offers only an ssh-rsa host key (OpenSSH >= 8.8 refuses it unless asked) and no SFTP
# server of its own: ansible pipes files through the command channel instead.
ADAPTER_SSH = {
    "ANSIBLE_SSH_ARGS": "-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa -o ControlMaster=auto "
                        "-o ControlPersist=60s",
    "ANSIBLE_SSH_TRANSFER_METHOD": "piped",
}
RUNTIME_FOR_CHECKS = 'ENVIRONMENT="verify"\n'  # the neutral runtime config `bake.py verify` uses without --env


@dataclass
class BuildVerification:
    """The build instance's test run: recorded in the catalog and tagged on every AMI and snapshot."""

    passed: bool
    counts: str
    summary: str
    junit: Path
    seconds: float

    @property
    def tags(self) -> dict[str, str]:
        return {tags.VERIFIED: "passed" if self.passed else "failed",
                tags.VERIFICATION: sanitize_tag_value(f"packer build: testinfra on the build instance: {self.counts}")}


@dataclass
class BakePlan:
    """What a bake starts from: the home region, the base AMI, the layer keys and the variables the playbook gets."""

    region: str
    base_ami: str
    keys: dict[str, str]  # region -> its EBS key ('' = the region's default key), home region first
    planned: list[PlannedLayer]
    digest: str
    extra_vars: dict[str, Any]
    artifacts: dict[str, str]
    requirements: dict[str, str] = field(default_factory=dict)  # requirements.lock, as provenance records it


class PackerBake:
    """One Packer run in progress; owns the version reservation and anything the run registers until done."""

    def __init__(self, builder: AmiBuilder, definition: ImageDefinition, run: Run, cancel: Cancellation,
                 plan: BakePlan, *, packer: str, template: Path, started: float):
        self.b = builder
        self.definition = definition
        self.run = run
        self.cancel = cancel
        self.packer = packer
        self.template = template
        self.plan = plan
        self.region = plan.region
        self.started = started
        self.settings = builder.project.aws
        self.regions = self.settings.all_regions(plan.region)
        self.version: str | None = None
        self.ami_name = ""
        self.images: dict[str, dict[str, Any]] = {}  # region -> the AMI as EC2 described it once tagged
        self.root_device = ""  # the base AMI's, looked up with the template's variables
        self.keep_on_failure = False  # Packer's -on-error=abort: the build instance stays up for inspection
        self.manifest = run.path / "packer-manifest.json"
        self.log_path = run.path / "packer.log"

    # -- the whole bake --------------------------------------------------------------------------

    def go(self) -> BuildResult:
        succeeded = False
        try:
            result = self._bake()
            succeeded = True
            return result
        finally:
            if not succeeded:
                self._undo()

    def _bake(self) -> BuildResult:
        ec2 = clients.client("ec2", self.region)
        name = self.definition.name
        ssm = clients.client("ssm", self.region)
        self.version = self.b.catalog.reserve_version(  # a version whose AMIs are gone may have its record still
            name, self.run.id, os.getpid(),
            taken=lambda v: verification_record.version_taken(ec2, ssm, name, v))
        provenance = self.provenance()
        var_file = self.write_inputs(provenance)
        t = time.monotonic()
        self._run_packer(var_file)
        built = self._built_ami(provenance)
        verification = self._verification(time.monotonic() - t)
        copy_tags = self.ami_tags(provenance)
        if verification:  # on the AMI first: a checkout or CI job that adopts the version sees the result
            self.cancel.check()  # (bakery.aws.adopt); copies are tagged with it as they are created
            amis.tag_with_snapshots(ec2, built[self.region], verification.tags)
            copy_tags.update(verification.tags)
        description = f"{name} {provenance.version} from {provenance.git_commit[:12]} (bakery)"
        self._set_attributes(self.region, description)
        built.update(self._copy_to_regions(copy_tags, description))
        if verification:
            self._write_record(built, verification)
        self.cancel.check()
        home = built[self.region]
        record = {**provenance.to_dict(), "amis": built}
        self.b.catalog.complete_version(
            name, self.version, image_ref=home, image_id=home, input_digest=self.plan.digest, provenance=record,
            layers=[{"role": p.role, "role_digest": p.role_digest, "key": p.key, "cached": False}
                    for p in self.plan.planned])
        if verification:
            self._record_verification(verification)
        where = ", ".join(f"{ami} in {region}" for region, ami in built.items())
        self.b.progress.note(f"{name}:{self.version}: {where}")
        return BuildResult(image=name, version=self.version, ref=home, image_id=home, input_digest=self.plan.digest,
                           reused=False, run_id=self.run.id, seconds=round(time.monotonic() - self.started, 3),
                           layers=[LayerResult(p.role, p.key, p.role_digest, cached=False) for p in self.plan.planned],
                           provenance=record)

    def provenance(self) -> Provenance:
        git = git_facts(self.b.project.root)
        return Provenance(
            image=self.definition.name, version=self.version or "", git_commit=git.commit, git_message=git.message,
            git_branch=git.branch, git_dirty=git.dirty, build_time=utc_now(), base_image=self.plan.base_ami,
            base_digest=self.plan.base_ami, input_digest=self.plan.digest, bakery_version=__version__,
            roles={p.role: p.role_digest for p in self.plan.planned}, artifacts=self.plan.artifacts,
            requirements=self.plan.requirements)

    # -- Packer's inputs -------------------------------------------------------------------------

    def test_files(self) -> list[Path]:
        """What `bake.py verify` runs too: the image's suite, every project role's Molecule tests, and a third-party
        role's own tests only when verify.role_tests names it (they often assume their own Molecule platforms)."""
        files = [self.b.project.root / "tests" / "images" / f"test_{self.definition.name}.py"]
        for role in (p.layer.role for p in self.plan.planned if not p.layer.role.third_party):
            files += sorted((role.path / "molecule" / "default" / "tests").glob("test_*.py"))
        roles = baked_roles([p.layer.role for p in self.plan.planned])
        for role in (roles[name] for name in self.definition.role_tests if roles[name].third_party):
            files += sorted(role.path.glob("molecule/*/tests/test_*.py"))
        return [f for f in dict.fromkeys(files) if f.is_file()]

    def inventory_groups(self) -> list[str]:
        """Like the local target, a bake ignores `hosts:`: the build instance joins every group a play names."""
        named = set()
        for p in self.plan.planned:
            hosts = p.layer.play_header.get("hosts", "all")
            for pattern in (hosts if isinstance(hosts, list) else re.split(r"[,:]", str(hosts))):
                name = str(pattern).strip().lstrip("&!")
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name) and name not in ("all", "ungrouped"):
                    named.add(name)
        return sorted(named | {"bakery_build", self.definition.name.replace("-", "_")})

    def ami_tags(self, provenance: Provenance) -> dict[str, str]:
        """The AMIs' and snapshots' tags: the provenance and this run's id (a failed bake removes only its own AMIs)."""
        return {**tags.provenance_tags(provenance), tags.RUN: sanitize_tag_value(self.run.id)}

    def variables(self, provenance: Provenance) -> dict[str, Any]:
        """Every variable of packer/aws.pkr.hcl; the tests validate the template with exactly these."""
        s = self.settings
        suffix = self.run.id.rsplit("-", 1)[-1]
        self.ami_name = f"{self.definition.name}-{provenance.version}-{suffix}"
        self.root_device = self.root_device or amis.root_device(clients.client("ec2", self.region), self.plan.base_ami)
        return {
            "region": self.region, "source_ami": self.plan.base_ami, "instance_type": s.instance_type,
            "ssh_username": s.ssh_username, "subnet_id": s.subnet_id, "security_group_ids": s.security_group_ids,
            "iam_instance_profile": s.instance_profile, "volume_size": s.volume_size,
            "kms_key_id": self.plan.keys[self.region], "root_device_name": self.root_device,
            "ami_name": self.ami_name, "tags": self.ami_tags(provenance),
            "run_tags": {"Name": f"bakery-build-{self.definition.name}-{suffix}", tags.MANAGED: "true",
                         tags.IMAGE: self.definition.name, tags.VERSION: provenance.version, tags.RUN: self.run.id},
            **self._provisioner_variables(provenance),
            "manifest_path": str(self.manifest),
        }

    def _provisioner_variables(self, provenance: Provenance) -> dict[str, Any]:
        """The template's variables for its two provisioners: ansible's playbook run and the testinfra script."""
        run_dir = self.run.path
        env = ansible_env(self.b.project.root)
        testinfra_env = {
            "BAKERY_PYTHON": sys.executable, "BAKERY_ROOT": str(self.b.project.root),
            "BAKERY_TESTS": " ".join(str(f) for f in self.test_files()),
            "BAKERY_JUNIT": str(run_dir / "testinfra-build.xml"),
            "BAKERY_VERIFY_IMAGE": self.definition.name, "BAKERY_VERIFY_VERSION": provenance.version,
            "BAKERY_VERIFY_COMMIT": provenance.git_commit, "BAKERY_VERIFY_ENV": "verify", "BAKERY_SUDO": "1",
        }
        return {
            "playbook_file": str(self.definition.playbook),
            "ansible_command": str(Path(sys.executable).parent / "ansible-playbook"),
            "ansible_extra_vars_file": str(run_dir / "ansible-extra-vars.json"),
            "ansible_groups": self.inventory_groups(),
            "ansible_env_vars": [f"{k}={v}" for k, v in {**env, **ADAPTER_SSH}.items()],
            "image_release_file": str(run_dir / "image-release"),
            "runtime_env_file": str(run_dir / "runtime.env"),
            "testinfra_script": str(self.b.project.root / TESTINFRA_SCRIPT),
            "testinfra_env": [f"{k}={v}" for k, v in testinfra_env.items()],
        }

    def write_inputs(self, provenance: Provenance) -> Path:
        """The var file and the files it names, all in the run directory (kept for the record)."""
        variables = self.variables(provenance)
        extra = {**self.plan.extra_vars, "ansible_python_interpreter": "/usr/bin/python3"}
        Path(variables["ansible_extra_vars_file"]).write_text(json.dumps(extra, indent=2, sort_keys=True),
                                                              encoding="utf-8")
        Path(variables["image_release_file"]).write_text(provenance.release_file(), encoding="utf-8")
        Path(variables["runtime_env_file"]).write_text(RUNTIME_FOR_CHECKS, encoding="utf-8")
        var_file = self.run.path / "packer.vars.json"
        var_file.write_text(json.dumps(variables, indent=2, sort_keys=True), encoding="utf-8")
        return var_file

    # -- running Packer --------------------------------------------------------------------------

    def _run_packer(self, var_file: Path) -> None:
        step = f"packer build {self.definition.name}:{self.version}"
        self.b.progress.step_start(step, f"amazon-ebs in {self.region} from {self.plan.base_ami}")
        cmd = [self.packer, "build", "-machine-readable", "-color=false",
               *(["-on-error=abort"] if self.keep_on_failure else []), f"-var-file={var_file}", str(self.template)]
        rc, failure = stream_packer(cmd, cwd=self.b.project.root, log_path=self.log_path, cancel=self.cancel,
                                    progress=self.b.progress, step=step)
        self.cancel.check()
        if rc != 0:
            self.b.progress.step_done(step, "FAILED")
            if self.keep_on_failure:
                self.b.progress.note("packer left the build instance running for inspection "
                                     f"(tag bakery:run={self.run.id}); terminate it in the EC2 console when done")
            raise OperationError(f"packer build of {self.definition.name} failed at '{failure.step}': "
                                 f"{failure.describe(rc)} (log: {self.log_path})")
        self.b.progress.step_done(step, "built")

    # -- after Packer ----------------------------------------------------------------------------

    def _built_ami(self, provenance: Provenance) -> dict[str, str]:
        """The home region's AMI Packer's manifest names, checked on EC2 (visible, tagged): {home region: AMI id}."""
        built = parse_manifest(self.manifest)
        if self.region not in built:
            raise OperationError(f"packer manifest {self.manifest} has no AMI in the home region {self.region}: "
                                 f"{built}")
        for region, ami in built.items():  # what a template copying on its own made: checked, so the undo finds it
            self.cancel.check()
            self._check_registered(clients.client("ec2", region), region, ami, self.ami_tags(provenance))
        if set(built) != {self.region}:
            raise OperationError(f"packer copied the AMI itself ({built}); {self.template} must not set ami_regions: "
                                 "bake.py copies the tagged AMI to aws.regions")
        return built

    def _check_registered(self, ec2, region: str, ami: str, expected: dict[str, str]) -> None:
        """EC2 may not show a new AMI at once: wait, then insist on its tags."""
        image = amis.wait_until_visible(ec2, ami)
        found = tags.from_tag_list(image.get("Tags"))
        wrong = sorted(k for k, v in expected.items() if found.get(k) != v)
        if wrong:
            raise OperationError(f"AMI {ami} in {region} lacks the provenance tags {', '.join(wrong)}; "
                                 "the template must set tags = var.tags")
        self.images[region] = image

    def _set_attributes(self, region: str, description: str = "") -> None:
        """What Packer's template leaves out, on an AMI tagged already: IMDSv2, description (no sharing: distribute
        shares a version once it passed verify --target aws)."""
        self.cancel.check()
        ec2, image = clients.client("ec2", region), self.images[region]
        # Packer 1.6.6 cannot launch its build instance with IMDSv2 required; every instance of the AMI will.
        if image.get("ImdsSupport") != "v2.0":  # a copy of an AMI that has it may have it (unconfirmed)
            ec2.modify_image_attribute(ImageId=image["ImageId"], ImdsSupport={"Value": "v2.0"})
        if description:
            ec2.modify_image_attribute(ImageId=image["ImageId"], Description={"Value": description})

    def _copy_to_regions(self, copy_tags: dict[str, str], description: str) -> dict[str, str]:
        """The tagged home AMI copied to every other region (its key, the tags on creation), waited for.

        Returns region -> copy. A copy that fails or outlasts the wait fails the
        bake, whose undo removes the copies with the rest (their bakery:run tag).
        """
        keys = {region: self.plan.keys.get(region, "") for region in self.regions if region != self.region}
        if not keys:
            return {}
        ec2 = {region: clients.client("ec2", region) for region in self.regions}
        started = distribute.start_copies(ec2, self.images[self.region], self.region, keys, copy_tags,
                                          self.b.progress, description, run_id=self.run.id)
        described = distribute.wait_for_copies(ec2, started, self.b.progress, distribute.COPY_TIMEOUT,
                                               advice="the bake removes its AMIs and copies; bake again")
        for region, image in described.items():
            distribute.tag_missing(ec2[region], RegionResult(region=region, ami_id=image["ImageId"],
                                                             snapshots=amis.snapshot_ids(image)), image, copy_tags)
            self.images[region] = image
            self._set_attributes(region)
        return started

    def _write_record(self, built: dict[str, str], verification: BuildVerification) -> None:
        """The build instance's result as the version's write-once record (what adopt trusts, not the tag)."""
        verification_record.write_record(
            clients.client("ssm", self.region), image=self.definition.name, version=self.version or "",
            passed=verification.passed, amis=built,
            snapshots={region: amis.snapshot_ids(self.images[region]) for region in built},
            report_sha256=hashlib.sha256(verification.junit.read_bytes()).hexdigest(),
            summary=verification.summary, run_id=self.run.id)

    def _verification(self, seconds: float) -> BuildVerification | None:
        """The build instance's testinfra report (packer/testinfra.sh), or None (with a note) if nothing was tested."""
        junit = self.run.path / "testinfra-build.xml"
        files = [str(f.relative_to(self.b.project.root)) for f in self.test_files()]
        if not files or not junit.is_file():
            why = ("the image has no testinfra suite and no role tests" if not files
                   else f"the template wrote no report at {junit}")
            self.b.progress.note(f"{self.definition.name}:{self.version}: not verified ({why}); "
                                 "deploys to environments that require verification need --force")
            return None
        passed, counts = read_junit(junit)
        summary = (f"testinfra on the build instance, before the AMI was made: {counts} ({', '.join(files)}); "
                   "the offline boot and the secret scan of bake.py verify do not run on aws")
        return BuildVerification(passed=passed, counts=counts, summary=summary, junit=junit, seconds=round(seconds, 1))

    def _record_verification(self, verification: BuildVerification) -> None:
        """The report as this version's catalog verification (what bakery.verify.gate reads)."""
        self.b.catalog.record_verification(self.definition.name, self.version or "", env=None, started=utc_now(),
                                           seconds=verification.seconds, passed=verification.passed,
                                           run_id=self.run.id, summary=verification.summary,
                                           reports={"junit": str(verification.junit), "packer_log": str(self.log_path)})
        outcome = "passed" if verification.passed else "FAILED"
        self.b.progress.note(f"{self.definition.name}:{self.version}: verification {outcome}: "
                             f"{verification.counts} (report {verification.junit})")

    def _undo(self) -> None:
        """Nothing half-made stays: deregister every AMI this run registered (by run tag or name), drop the reservation.

        Never by image and version alone: another checkout's catalog may have
        reserved the same version, and its AMIs are not this run's to remove.
        An AMI Packer registered but never tagged is found by this run's unique
        AMI name and claimed first (bakery.aws.amis.claim): the IAM policy lets
        the role deregister only what carries bakery:managed=true.
        """
        if not self.version:
            return
        try:
            for region in self.regions:
                ec2 = clients.client("ec2", region)
                found = {i["ImageId"]: i for i in amis.find_amis(ec2, {tags.RUN: sanitize_tag_value(self.run.id)})}
                if self.ami_name:
                    found.update({i["ImageId"]: i for i in amis.owned_named(ec2, self.ami_name)})
                for ami, image in sorted(found.items()):
                    amis.claim(ec2, image, sanitize_tag_value(self.run.id))
                    amis.deregister_with_snapshots(ec2, ami)
                    self.b.progress.note(f"deregistered {ami} in {region} (and its snapshots): the bake did not finish")
        except Exception as exc:  # noqa: BLE001 - the failure that brought us here is the one to report
            log.error("could not clean up AMIs of %s:%s: %s; gc removes them later",
                      self.definition.name, self.version, exc)
            self.b.progress.note(f"could not deregister what this bake registered ({exc}); "
                                 "run ./bake.py gc --target aws")
        finally:
            self.b.catalog.discard_version(self.definition.name, self.version)
