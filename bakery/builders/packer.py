"""The aws builder: bake an AMI with Packer's amazon-ebs builder and the same playbook as the local target.

Flow: resolve the base AMI, compute the input digest (role layer keys chained on
the base AMI id), return the existing AMI tagged with that digest if there is one
(Packer never starts), otherwise reserve a version, write Packer's inputs into
the run directory, run `packer build` streaming its output as progress, read the
AMI ids per region from the manifest, wait until EC2 shows each AMI with its
tags, tag every AMI and snapshot with the build instance's test result
(bakery:verified, so any checkout can adopt it with its verification), and only
then mark the version ready. A failure or an interrupt discards the reservation
and deregisters what this run registered (its bakery:run tag or its AMI name),
never another bake's AMI of the same version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from bakery import __version__
from bakery.ansible import ansible_env
from bakery.aws import amis, clients, tags
from bakery.builders.ami import AmiBuilder, region_keys
from bakery.builders.base import BuildOptions, BuildResult, LayerResult
from bakery.config import ImageDefinition
from bakery.errors import ConfigError, OperationError
from bakery.layers import PlannedLayer, input_digest, plan_layers
from bakery.provenance import Provenance, git_facts, sanitize_tag_value, utc_now
from bakery.runs import Run
from bakery.signals import Cancellation, cancellable

log = logging.getLogger("bakery.build")

TEMPLATE = Path("packer") / "aws.pkr.hcl"
TESTINFRA_SCRIPT = Path("packer") / "testinfra.sh"
# Packer 1.6.6's SSH adapter offers only an ssh-rsa host key (OpenSSH >= 8.8 refuses it unless asked) and no SFTP
# server of its own: ansible pipes files through the command channel instead.
ADAPTER_SSH = {
    "ANSIBLE_SSH_ARGS": "-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa -o ControlMaster=auto -o ControlPersist=60s",
    "ANSIBLE_SSH_TRANSFER_METHOD": "piped",
}
# What Packer announces while it cleans up after a failure: never the step that failed.
CLEANUP_STEPS = ("Deleting temporary", "No volumes to clean up", "Terminating the source", "Cleaning up", "Deregistering the AMI")
RUNTIME_FOR_CHECKS = 'ENVIRONMENT="verify"\n'  # the neutral runtime config `bake.py verify` uses without --env


@dataclass
class PackerFailure:
    """What Packer's output said went wrong: the last step it announced and its error lines."""

    step: str = "starting packer"
    error: str = ""
    detail: str = ""  # the first fatal line of a provisioner (ansible's FAILED! task), more telling than Packer's summary
    task: str = ""  # the ansible task running when it failed

    def describe(self, rc: int) -> str:
        return "; ".join(part for part in (self.detail, self.error) if part) or f"exit code {rc}"


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


def parse_manifest(path: Path) -> dict[str, str]:
    """AMI ids per region from the manifest post-processor's file: the last build of the last Packer run.

    A manifest accumulates builds across runs; `last_run_uuid` names the run
    that wrote it last, and its `artifact_id` reads "us-east-1:ami-1,eu-west-1:ami-2".
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OperationError(f"packer finished but wrote no manifest at {path}; check the template's manifest post-processor") from exc
    except json.JSONDecodeError as exc:
        raise OperationError(f"{path}: packer manifest is not JSON ({exc})") from exc
    builds = data.get("builds") or []
    run = data.get("last_run_uuid")
    mine = [b for b in builds if b.get("packer_run_uuid") == run] if run else builds
    if not mine:
        raise OperationError(f"{path}: no build of packer run {run} in the manifest")
    found: dict[str, str] = {}
    for part in str(mine[-1].get("artifact_id", "")).split(","):
        region, sep, ami = part.strip().partition(":")
        if not sep or not ami.startswith("ami-"):
            raise OperationError(f"{path}: artifact_id entry '{part}' is not REGION:AMI-ID")
        found[region] = ami
    return found


def packer_env() -> dict[str, str]:
    """Packer's environment: ansible-playbook and pytest of bakery's own virtual environment first on PATH
    (the provisioners and packer/testinfra.sh find them there), no colour, no update check."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "PACKER_NO_COLOR": "1", "CHECKPOINT_DISABLE": "1"}


def read_junit(path: Path) -> tuple[bool, str]:
    """Whether a pytest JUnit report passed (at least one test, none failed), and its counts in words."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        return False, f"unreadable report ({exc})"
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('name')}" for s in suites for case in s.findall("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    ran = total["tests"] - total["skipped"]
    words = f"{ran - total['failures'] - total['errors']} passed, {total['failures'] + total['errors']} failed, {total['skipped']} skipped"
    if failed:
        words += ": " + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
    return ran > 0 and not failed and not total["failures"] and not total["errors"], words


def unescape_machine_readable(data: str) -> str:
    """Packer's -machine-readable escapes commas and newlines inside a field."""
    return data.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "")


def read_output_line(line: str, failure: PackerFailure) -> str | None:
    """One line of `packer build -machine-readable`: the message to show (None for non-ui lines).

    Remembers on `failure` the last step Packer announced before it failed, the
    ansible task and fatal line if a provisioner failed, and Packer's error.
    """
    fields = line.split(",", 4)
    if len(fields) < 4 or fields[2] != "ui":
        return None
    kind, message = fields[3], unescape_machine_readable(fields[4] if len(fields) > 4 else "").strip()
    if not message:
        return None
    text = re.sub(r"^(==>|-->)? ?[\w.-]+\.[\w.-]+: ", "", message)  # without the "amazon-ebs.image: " prefix
    if kind == "error":
        cause = re.match(r"^Build '[^']+' errored after [^:]+: (.*)", message, re.S)
        if cause:  # Packer's own summary of why the build failed
            failure.error = " ".join(cause.group(1).split())[:500]
        elif not failure.error:  # else the first error: cleanup steps and summaries follow it
            failure.error = " ".join(text.splitlines()[0].split())[:500]
    elif (task := re.search(r"TASK \[(.+?)\]", text)) and not failure.detail:
        failure.task = task.group(1)
    elif not failure.detail and ("fatal:" in text or "FAILED!" in text):  # ansible's failed task
        failure.detail = (f"task '{failure.task}': " if failure.task else "") + " ".join(text.split())[:500]
    elif not failure.detail and text.startswith("FAILED "):  # pytest's summary of a failed testinfra test
        failure.detail = "testinfra " + " ".join(text.split())[:500]
    elif message.startswith("==> ") and not failure.error:
        announced = message.removeprefix("==> ").split(": ", 1)[-1].strip()
        if not announced.startswith(("Provisioning step had errors", "Some builds didn't", "Wait completed", "Builds finished", *CLEANUP_STEPS)):
            failure.step = announced
    return message


class PackerBuilder(AmiBuilder):

    def build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
        started = time.monotonic()
        plan = self.plan(definition, options)
        if not options.no_cache:
            existing = self.existing_ami(clients.client("ec2", plan.region), definition.name, plan.digest)
            if existing:
                return self.reused(existing, plan.region, plan.digest, plan.planned, run, started)
        template = self.project.root / TEMPLATE
        packer = self.check_tools(template)  # only now: reusing an AMI needs no Packer
        with cancellable() as cancel:
            bake = PackerBake(self, definition, run, cancel, plan, packer=packer, template=template, started=started)
            bake.keep_on_failure = options.keep_on_failure
            return bake.go()

    def plan(self, definition: ImageDefinition, options: BuildOptions) -> BakePlan:
        """Settings checked, base AMI resolved, every layer key and the input digest computed; nothing changed yet."""
        settings = self.project.aws
        region = clients.resolve_region(settings.region or None)
        keys = region_keys(settings, region, all_or_none=True)
        clients.check_credentials()
        base_ami = amis.resolve_base_ami(clients.client("ssm", region), settings.base_ami_parameter, settings.base_ami)
        extra_vars = {"bakery_image": definition.name, "bakery_target": self.target, **options.extra_vars}
        role_inputs, role_vars = self.artifact_inputs(definition)
        planned = plan_layers(definition, base_ami, extra_vars, role_inputs)
        digest = input_digest(planned, base_ami)
        log.info("image %s: base AMI %s in %s, input digest %s", definition.name, base_ami, region, digest)
        return BakePlan(region=region, base_ami=base_ami, keys=keys, planned=planned, digest=digest, extra_vars={**extra_vars, **_merged(role_vars)},
                        artifacts={v["artifact"]: v["version"] for v in role_inputs.values()})

    def check_tools(self, template: Path) -> str:
        """Packer on PATH and the template in the project, or one line saying what to do."""
        packer = shutil.which("packer")
        if not packer:
            raise ConfigError("packer is not installed (needed by --builder packer): run make setup, which installs Debian's packer")
        if not template.is_file():
            raise ConfigError(f"{template}: Packer template not found; copy packer/aws.pkr.hcl and packer/testinfra.sh from bakery "
                              "into the project (or use --builder imagebuilder)")
        return packer


def _merged(role_vars: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One playbook run gets every role's artifact variables (they are prefixed with the role's name)."""
    merged: dict[str, Any] = {}
    for values in role_vars.values():
        merged.update(values)
    return merged


def _lines(proc: subprocess.Popen) -> Iterator[str | None]:
    """Packer's output line by line, and None every second of silence so a pending signal is seen in time."""
    assert proc.stdout is not None
    fd, pending = proc.stdout.fileno(), b""
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        yield from (line.decode("utf-8", "replace") for line in complete)
    if pending:
        yield pending.decode("utf-8", "replace")


class PackerBake:
    """One Packer run in progress; owns the version reservation and anything the run registers until done."""

    def __init__(self, builder: PackerBuilder, definition: ImageDefinition, run: Run, cancel: Cancellation, plan: BakePlan, *,
                 packer: str, template: Path, started: float):
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
        self.version = self.b.catalog.reserve_version(
            name, self.run.id, os.getpid(), taken=lambda v: bool(amis.find_amis(ec2, {tags.IMAGE: name, tags.VERSION: v})))
        provenance = self.provenance()
        var_file = self.write_inputs(provenance)
        t = time.monotonic()
        self._run_packer(var_file)
        built = parse_manifest(self.manifest)
        if self.region not in built:
            raise OperationError(f"packer manifest {self.manifest} has no AMI in the home region {self.region}: {built}")
        expected = self.ami_tags(provenance)
        for region, ami in built.items():
            self.cancel.check()
            self._check_registered(clients.client("ec2", region), region, ami, expected)
        verification = self._verification(time.monotonic() - t)
        if verification:  # on the AMIs first: a checkout or CI job that adopts the version sees the result (bakery.aws.adopt)
            for region, ami in built.items():
                self.cancel.check()
                amis.tag_with_snapshots(clients.client("ec2", region), ami, verification.tags)
        self.cancel.check()
        home = built[self.region]
        record = {**provenance.to_dict(), "amis": built}
        self.b.catalog.complete_version(
            name, self.version, image_ref=home, image_id=home, input_digest=self.plan.digest, provenance=record,
            layers=[{"role": p.role, "role_digest": p.role_digest, "key": p.key, "cached": False} for p in self.plan.planned])
        if verification:
            self._record_verification(verification)
        self.b.progress.note(f"{name}:{self.version}: " + ", ".join(f"{ami} in {region}" for region, ami in built.items()))
        return BuildResult(image=name, version=self.version, ref=home, image_id=home, input_digest=self.plan.digest, reused=False,
                           run_id=self.run.id, seconds=round(time.monotonic() - self.started, 3),
                           layers=[LayerResult(p.role, p.key, p.role_digest, cached=False) for p in self.plan.planned], provenance=record)

    def provenance(self) -> Provenance:
        git = git_facts(self.b.project.root)
        return Provenance(
            image=self.definition.name, version=self.version or "", git_commit=git.commit, git_message=git.message,
            git_branch=git.branch, git_dirty=git.dirty, build_time=utc_now(), base_image=self.plan.base_ami, base_digest=self.plan.base_ami,
            input_digest=self.plan.digest, bakery_version=__version__, roles={p.role: p.role_digest for p in self.plan.planned},
            artifacts=self.plan.artifacts)

    # -- Packer's inputs -------------------------------------------------------------------------

    def test_files(self) -> list[Path]:
        """What `bake.py verify` runs too: the image's suite, then every baked role's Molecule tests."""
        root = self.b.project.root
        files = [root / "tests" / "images" / f"test_{self.definition.name}.py"]
        for p in self.plan.planned:
            files += sorted((self.b.project.roles_dir / p.role / "molecule" / "default" / "tests").glob("test_*.py"))
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
        """The AMIs' and snapshots' tags: the provenance, and this run's id (a failed bake removes only its own AMIs)."""
        return {**tags.provenance_tags(provenance), tags.RUN: sanitize_tag_value(self.run.id)}

    def variables(self, provenance: Provenance) -> dict[str, Any]:
        """Every variable of packer/aws.pkr.hcl; the tests validate the template with exactly these."""
        s = self.settings
        run_dir = self.run.path
        suffix = self.run.id.rsplit("-", 1)[-1]
        self.ami_name = f"{self.definition.name}-{provenance.version}-{suffix}"
        env = ansible_env(self.b.project.root)
        self.root_device = self.root_device or amis.root_device(clients.client("ec2", self.region), self.plan.base_ami)
        return {
            "region": self.region, "source_ami": self.plan.base_ami, "instance_type": s.instance_type, "ssh_username": s.ssh_username,
            "subnet_id": s.subnet_id, "security_group_ids": s.security_group_ids, "iam_instance_profile": s.instance_profile,
            "volume_size": s.volume_size, "kms_key_id": self.plan.keys[self.region], "root_device_name": self.root_device,
            "region_kms_key_ids": {r: k for r, k in self.plan.keys.items() if r != self.region and k},
            "ami_name": self.ami_name,
            "ami_description": f"{self.definition.name} {provenance.version} from {provenance.git_commit[:12]} (bakery)",
            "ami_regions": [r for r in self.regions if r != self.region], "ami_users": s.accounts, "snapshot_users": s.accounts,
            "tags": self.ami_tags(provenance),
            "run_tags": {"Name": f"bakery-build-{self.definition.name}-{suffix}", tags.MANAGED: "true", tags.IMAGE: self.definition.name,
                         tags.VERSION: provenance.version, tags.RUN: self.run.id},
            "playbook_file": str(self.definition.playbook),
            "ansible_command": str(Path(sys.executable).parent / "ansible-playbook"),
            "ansible_extra_vars_file": str(run_dir / "ansible-extra-vars.json"),
            "ansible_groups": self.inventory_groups(),
            "ansible_env_vars": [f"{k}={v}" for k, v in {**env, **ADAPTER_SSH}.items()],
            "image_release_file": str(run_dir / "image-release"),
            "runtime_env_file": str(run_dir / "runtime.env"),
            "testinfra_script": str(self.b.project.root / TESTINFRA_SCRIPT),
            "testinfra_env": [f"{k}={v}" for k, v in {
                "BAKERY_PYTHON": sys.executable, "BAKERY_ROOT": str(self.b.project.root),
                "BAKERY_TESTS": " ".join(str(f) for f in self.test_files()), "BAKERY_JUNIT": str(run_dir / "testinfra-build.xml"),
                "BAKERY_VERIFY_IMAGE": self.definition.name, "BAKERY_VERIFY_VERSION": provenance.version,
                "BAKERY_VERIFY_COMMIT": provenance.git_commit, "BAKERY_VERIFY_ENV": "verify", "BAKERY_SUDO": "1"}.items()],
            "manifest_path": str(self.manifest),
        }

    def write_inputs(self, provenance: Provenance) -> Path:
        """The var file and the files it names, all in the run directory (kept for the record)."""
        variables = self.variables(provenance)
        extra = {**self.plan.extra_vars, "ansible_python_interpreter": "/usr/bin/python3"}
        Path(variables["ansible_extra_vars_file"]).write_text(json.dumps(extra, indent=2, sort_keys=True), encoding="utf-8")
        Path(variables["image_release_file"]).write_text(provenance.release_file(), encoding="utf-8")
        Path(variables["runtime_env_file"]).write_text(RUNTIME_FOR_CHECKS, encoding="utf-8")
        var_file = self.run.path / "packer.vars.json"
        var_file.write_text(json.dumps(variables, indent=2, sort_keys=True), encoding="utf-8")
        return var_file

    # -- running Packer --------------------------------------------------------------------------

    def _run_packer(self, var_file: Path) -> None:
        step = f"packer build {self.definition.name}:{self.version}"
        self.b.progress.step_start(step, f"amazon-ebs in {self.region} from {self.plan.base_ami}")
        cmd = [self.packer, "build", "-machine-readable", "-color=false", *(["-on-error=abort"] if self.keep_on_failure else []),
               f"-var-file={var_file}", str(self.template)]
        env = packer_env()
        failure = PackerFailure()
        self.cancel.deferred = True  # a signal now asks Packer to stop: it terminates its instance and deregisters what it made
        try:
            with open(self.log_path, "w", encoding="utf-8") as logfile, subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=self.b.project.root,
                    start_new_session=True) as proc:  # its own session: one Ctrl-C reaches bake.py, which forwards it once
                stopping = False
                for line in _lines(proc):
                    if line is not None:
                        logfile.write(line + "\n")
                        self._show(line, step, failure)
                    if self.cancel.requested and not stopping:
                        stopping = True
                        self.b.progress.note(f"{self.cancel.signal_name}: asking packer to stop; it terminates its instance and cleans up")
                        proc.send_signal(signal.SIGINT)
                rc = proc.wait()
        finally:
            self.cancel.deferred = False
        self.cancel.check()
        if rc != 0:
            self.b.progress.step_done(step, "FAILED")
            if self.keep_on_failure:
                self.b.progress.note(f"packer left the build instance running for inspection (tag bakery:run={self.run.id}); "
                                     "terminate it in the EC2 console when done")
            raise OperationError(f"packer build of {self.definition.name} failed at '{failure.step}': "
                                 f"{failure.describe(rc)} (log: {self.log_path})")
        self.b.progress.step_done(step, "built")

    def _show(self, line: str, step: str, failure: PackerFailure) -> None:
        message = read_output_line(line, failure)
        if message is None:
            return
        if message.startswith("==> "):  # one of Packer's steps: what the live status line counts
            self.b.progress.task_done(step, message.removeprefix("==> ")[:120], changed=False)
        self.b.progress.note(message)

    # -- after Packer ----------------------------------------------------------------------------

    def _check_registered(self, ec2, region: str, ami: str, expected: dict[str, str]) -> None:
        """EC2 may not show a new AMI (or its copy) at once: wait, then insist on its tags and IMDSv2."""
        image = amis.wait_until_visible(ec2, ami)
        found = tags.from_tag_list(image.get("Tags"))
        wrong = sorted(k for k, v in expected.items() if found.get(k) != v)
        if wrong:
            raise OperationError(f"AMI {ami} in {region} lacks the provenance tags {', '.join(wrong)}; the template must set tags = var.tags")
        # Packer 1.6.6 cannot launch its build instance with IMDSv2 required; every instance of the AMI will require it.
        ec2.modify_image_attribute(ImageId=ami, ImdsSupport={"Value": "v2.0"})

    def _verification(self, seconds: float) -> BuildVerification | None:
        """The testinfra report of the build instance (packer/testinfra.sh), or None (with a note) when nothing was tested."""
        junit = self.run.path / "testinfra-build.xml"
        files = [str(f.relative_to(self.b.project.root)) for f in self.test_files()]
        if not files or not junit.is_file():
            why = "the image has no testinfra suite and no role tests" if not files else f"the template wrote no report at {junit}"
            self.b.progress.note(f"{self.definition.name}:{self.version}: not verified ({why}); deploys to environments that "
                                 "require verification need --force")
            return None
        passed, counts = read_junit(junit)
        summary = (f"testinfra on the build instance, before the AMI was made: {counts} ({', '.join(files)}); "
                   "the offline boot and the secret scan of bake.py verify do not run on aws")
        return BuildVerification(passed=passed, counts=counts, summary=summary, junit=junit, seconds=round(seconds, 1))

    def _record_verification(self, verification: BuildVerification) -> None:
        """The report as this version's catalog verification (what bakery.gate reads)."""
        self.b.catalog.record_verification(self.definition.name, self.version or "", env=None, started=utc_now(),
                                           seconds=verification.seconds, passed=verification.passed, run_id=self.run.id,
                                           summary=verification.summary,
                                           reports={"junit": str(verification.junit), "packer_log": str(self.log_path)})
        self.b.progress.note(f"{self.definition.name}:{self.version}: verification {'passed' if verification.passed else 'FAILED'}: "
                             f"{verification.counts} (report {verification.junit})")

    def _undo(self) -> None:
        """Nothing half-made stays: deregister every AMI this run registered (by its run tag and by name), forget the reservation.

        Never by image and version alone: another checkout's catalog may have
        reserved the same version, and its AMIs are not this run's to remove.
        """
        if not self.version:
            return
        try:
            for region in self.regions:
                ec2 = clients.client("ec2", region)
                found = {i["ImageId"] for i in amis.find_amis(ec2, {tags.RUN: sanitize_tag_value(self.run.id)})}
                if self.ami_name:
                    found |= {i["ImageId"] for i in ec2.describe_images(
                        Owners=["self"], Filters=[{"Name": "name", "Values": [self.ami_name]}])["Images"]}
                for ami in sorted(found):
                    amis.deregister_with_snapshots(ec2, ami)
                    self.b.progress.note(f"deregistered {ami} in {region} (and its snapshots): the bake did not finish")
        except Exception as exc:  # noqa: BLE001 - the failure that brought us here is the one to report
            log.error("could not clean up AMIs of %s:%s: %s; gc removes them later", self.definition.name, self.version, exc)
            self.b.progress.note(f"could not deregister what this bake registered ({exc}); run ./bake.py gc --target aws")
        finally:
            self.b.catalog.discard_version(self.definition.name, self.version)
