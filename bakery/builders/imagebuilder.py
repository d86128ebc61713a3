"""The EC2 Image Builder builder: the same playbook baked into an AMI by AWS's own build service.

Flow: check the settings (bucket, instance profile), resolve the base AMI (SSM
parameter or aws.base_ami), compute the input digest with the base AMI id as
base digest, and return the existing AMI when one already carries that
`bakery:input-digest` tag (no Image Builder call at all). Otherwise check the
instance profile in IAM (bakery.aws.imagebuilder.instance_profile: a broken one
would fail only after a long wait), pack and
upload the bundle (bakery.aws.bundle), reserve a version in the catalog, create
or reuse the component, a recipe version, the infrastructure and distribution
configurations (bakery.aws.imagebuilder.resources), start the build and follow
it (bakery.aws.imagebuilder.wait). On AVAILABLE the home-region AMI id becomes
the version's image_ref and image_id.

Verification: the component's test phase runs the image's testinfra suite
(tests/images/test_<image>.py) on an instance of the new AMI, and a build only
becomes AVAILABLE when it passed; so when the image has a suite, its passing
is recorded as a catalog verification of the version (what bakery.verify.gate reads)
and written once to the version's SSM verification record in the home region
(bakery.aws.verification_record: every AMI, the snapshots behind each, the
sha256 of the report below), which is what a checkout that adopts the version
from AWS (bakery.aws.adopt) trusts. The tags bakery:verified / bakery:run on
every AMI and snapshot are for people reading the console. The report is what
bakery knows of the test phase: the Image Builder image ARN, its final state,
its test settings, where its logs are and the AMIs (Image Builder's API returns
no test output of its own; the logs hold it); the digest is of its canonical JSON.

On any failure or interrupt the reserved version is discarded and a build
still running is cancelled (cancel_image_creation): nothing half-registered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from bakery import __version__
from bakery.aws import tags as tag_names
from bakery.aws.amis import resolve_base_ami, root_device, tag_with_snapshots
from bakery.aws.bundle import Bundle, build_bundle, image_suite, require_bucket, upload_bundle
from bakery.aws.clients import check_credentials, client, resolve_region
from bakery.aws.imagebuilder import resources
from bakery.aws.imagebuilder.instance_profile import check_instance_profile
from bakery.aws.imagebuilder.wait import ImageBuildFailed, log_locations, wait_for_image
from bakery.aws.verification_record import version_taken, write_record
from bakery.builders.ami import AmiBuilder, region_keys
from bakery.builders.base import BuildOptions, BuildResult, LayerResult
from bakery.config import ImageDefinition
from bakery.deps.gate import check_lock, shared_lock
from bakery.errors import OperationError
from bakery.layers import PlannedLayer, input_digest, plan_layers
from bakery.provenance import Provenance, git_facts, sanitize_tag_value, utc_now
from bakery.runs import Run
from bakery.signals import cancellable

log = logging.getLogger("bakery.build")

POLL_FIRST, POLL_MAX = 15.0, 60.0  # seconds between get_image calls: the first, and the cap of the backoff
BUILD_TIMEOUT = 4 * 3600.0
TEST_TIMEOUT_MINUTES = 60


@dataclass
class _Plan:
    """What the build decided before it reserved a version."""

    definition: ImageDefinition
    region: str
    base_ami: str
    keys: dict[str, str]  # region -> its EBS key ('' = the region's default key), home region first
    root_device: str
    planned: list[PlannedLayer]
    digest: str
    bundle: Bundle
    bucket: str
    artifacts: dict[str, str]
    requirements: dict[str, str] = field(default_factory=dict)  # requirements.lock, as provenance records it


class ImageBuilderBuilder(AmiBuilder):

    def __init__(self, project, catalog, progress, *, poll_first: float = POLL_FIRST, poll_max: float = POLL_MAX,
                 timeout: float = BUILD_TIMEOUT, sleep=time.sleep):
        super().__init__(project, catalog, progress)
        self.poll_first, self.poll_max, self.timeout, self.sleep = poll_first, poll_max, timeout, sleep

    def build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
        # Held for the whole bake: `bake.py deps` cannot swap an install while the bake reads .bakery/galaxy.
        with shared_lock(self.project.root, on_wait=lambda: self.progress.note("waiting for bake.py deps to finish")):
            return self._build(definition, options, run)

    def _build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
        started = time.monotonic()
        settings = self.project.aws
        bucket = require_bucket(settings.artifacts_bucket)
        # fails on a missing instance profile before any AWS call
        resources.infrastructure_spec(definition.name, settings, bucket)
        requirements = check_lock(self.project.root)
        region = resolve_region(settings.region or None)
        keys = region_keys(settings, region)
        check_credentials()
        base_ami = resolve_base_ami(client("ssm", region), settings.base_ami_parameter, settings.base_ami)
        extra_vars = {"bakery_image": definition.name, "bakery_target": self.target, **options.extra_vars}
        role_inputs, role_vars = self.artifact_inputs(definition)
        planned = plan_layers(definition, base_ami, extra_vars, role_inputs)
        digest = input_digest(planned, base_ami)
        log.info("image %s: base AMI %s, input digest %s", definition.name, base_ami, digest)
        ec2 = client("ec2", region)
        if not options.no_cache:
            existing = self.existing_ami(ec2, definition.name, digest)
            if existing:
                return self.reused(existing, region, digest, planned, run, started)
        # before anything is uploaded or created: a profile Image Builder cannot use fails only after a long wait
        check_instance_profile(client("iam", region), settings.instance_profile, resources.instance_role_needs(bucket))
        bundle = build_bundle(self.project, definition, extra_vars, role_vars)
        if upload_bundle(client("s3", region), bucket, bundle):
            self.progress.note(f"{definition.name}: uploaded bundle {bundle.uri(bucket)} "
                               f"({len(bundle.data) >> 10} KiB)")
        else:
            self.progress.note(f"{definition.name}: bundle {bundle.uri(bucket)} is there already")
        plan = _Plan(definition, region, base_ami, keys, root_device(ec2, base_ami), planned, digest, bundle, bucket,
                     {v["artifact"]: v["version"] for v in role_inputs.values()}, requirements)
        with cancellable():
            return _ImageBuild(self, plan, run, ec2, started).go()


class _ImageBuild:
    """One Image Builder build in progress; owns the version reservation and the running build until done."""

    def __init__(self, builder: ImageBuilderBuilder, plan: _Plan, run: Run, ec2, started: float):
        self.b = builder
        self.plan = plan
        self.run = run
        self.ec2 = ec2
        self.started = started
        self.name = plan.definition.name
        self.ib = client("imagebuilder", plan.region)
        self.version: str | None = None
        self.build_arn: str | None = None

    def token(self, what: str) -> str:
        """Idempotency token: a retried call of this run is the same request, another run's is not."""
        return f"{self.run.id}-{what}"[-64:]

    def go(self) -> BuildResult:
        succeeded = False
        try:
            result = self._build()
            succeeded = True
            return result
        except ImageBuildFailed:
            self.build_arn = None  # it ended by itself: nothing to cancel
            raise
        finally:
            if not succeeded:
                self._cancel()
                if self.version:
                    self.b.catalog.discard_version(self.name, self.version)

    def _build(self) -> BuildResult:
        self.version = self.b.catalog.reserve_version(
            self.name, self.run.id, os.getpid(),
            taken=lambda v: version_taken(self.ec2, client("ssm", self.plan.region), self.name, v))
        provenance = self._provenance()
        label = f"{self.name}:{self.version}"
        tests = image_suite(self.b.project, self.plan.definition) is not None
        self.build_arn = self._start(provenance, label, tests)
        self.b.progress.note(f"{label}: started Image Builder build {self.build_arn}")
        waited_from, waited = utc_now(), time.monotonic()
        image = wait_for_image(self.ib, self.build_arn, self.b.progress, label, first=self.b.poll_first,
                               limit=self.b.poll_max, timeout=self.b.timeout, sleep=self.b.sleep)
        self.build_arn = None  # finished: nothing to cancel any more
        amis = {ami["region"]: ami["image"] for ami in (image.get("outputResources") or {}).get("amis", [])}
        home = amis.get(self.plan.region)
        if not home:
            raise OperationError(f"Image Builder build of {label} is AVAILABLE but names no AMI in {self.plan.region} "
                                 f"(it names: {', '.join(f'{r}={a}' for r, a in amis.items()) or 'none'}; "
                                 f"logs: {log_locations(image)})")
        self.b.progress.note(f"{label}: AMIs " + ", ".join(f"{region} {ami}" for region, ami in amis.items()))
        snapshots = self._tag(amis, provenance, tests)
        # the write-once record before the catalog calls the version ready: a failed write discards the version
        report = self._write_record(image, amis, snapshots) if tests else None
        self.b.catalog.complete_version(
            self.name, self.version, image_ref=home, image_id=home, input_digest=self.plan.digest,
            provenance=provenance.to_dict(),
            layers=[{"role": p.role, "role_digest": p.role_digest, "key": p.key, "cached": False}
                    for p in self.plan.planned])
        if report is not None:
            self.b.catalog.record_verification(
                self.name, self.version, env=None, started=waited_from, seconds=round(time.monotonic() - waited, 1),
                passed=True, run_id=self.run.id, summary=self._summary(), reports=report)
        return BuildResult(
            image=self.name, version=self.version, ref=home, image_id=home, input_digest=self.plan.digest, reused=False,
            run_id=self.run.id, seconds=round(time.monotonic() - self.started, 3),
            layers=[LayerResult(p.role, p.key, p.role_digest, cached=False) for p in self.plan.planned],
            provenance=provenance.to_dict(),
        )

    def _summary(self) -> str:
        return f"EC2 Image Builder test phase passed (tests/images/test_{self.name}.py)"

    def _tag(self, amis: dict[str, str], provenance: Provenance, tests: bool) -> dict[str, list[str]]:
        """Provenance and run id on every AMI and snapshot (Image Builder tags only the AMIs); each region's snapshots.

        With tests enabled, AVAILABLE means the test phase passed: the tags say so
        too, for people; bakery.aws.adopt trusts the verification record, not them.
        """
        made_tags = {**tag_names.provenance_tags(provenance), tag_names.RUN: sanitize_tag_value(self.run.id)}
        if tests:
            made_tags |= {tag_names.VERIFIED: "passed", tag_names.VERIFICATION: sanitize_tag_value(self._summary())}
        snapshots = {}
        for region, ami in amis.items():
            tagged = tag_with_snapshots(client("ec2", region), ami, made_tags)  # the AMI, then its snapshots
            snapshots[region] = tagged[1:]
        return snapshots

    def _write_record(self, image: dict, amis: dict[str, str], snapshots: dict[str, list[str]]) -> dict:
        """The passed test phase as the version's write-once SSM record (home region); the report for the catalog."""
        version = self.version or ""
        report = {"imagebuilder_image": image.get("arn", ""), "state": (image.get("state") or {}).get("status", ""),
                  "tests": image.get("imageTestsConfiguration") or {}, "logs": log_locations(image), "amis": amis}
        digest = hashlib.sha256(json.dumps(report, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        name = write_record(client("ssm", self.plan.region), image=self.name, version=version, passed=True, amis=amis,
                            snapshots=snapshots, report_sha256=digest, summary=self._summary(), run_id=self.run.id)
        self.b.progress.note(f"{self.name}:{version}: verification recorded in SSM {name}")
        return {**report, "report_sha256": digest, "record": name}

    def _start(self, provenance: Provenance, label: str, tests: bool) -> str:
        """Every resource the build needs (created, reused or updated in place), then the build: its ARN."""
        settings = self.b.project.aws
        version = self.version or ""
        document = resources.component_document(self.name, self.plan.bundle.uri(self.plan.bucket),
                                                self.plan.bundle.sha256)
        component_arn, created = resources.ensure_component(self.ib, self.name, document, self.token("component"))
        self.b.progress.note(f"{label}: {'created' if created else 'reusing'} component {component_arn}")
        recipe_arn = resources.ensure_recipe(
            self.ib, self.name, version, component_arn=component_arn,
            parameters=resources.component_parameters(version, provenance.git_commit, provenance.release_file()),
            parent_ami=self.plan.base_ami, root_device=self.plan.root_device, volume_size=settings.volume_size,
            kms_key_id=self.plan.keys[self.plan.region], token=self.token("recipe"))
        infrastructure = resources.infrastructure_spec(self.name, settings, self.plan.bucket)
        infrastructure_arn = resources.ensure_infrastructure(self.ib, self.name, infrastructure,
                                                             self.token("infrastructure"))
        distribution = resources.distribution_spec(self.name, version, self.plan.keys, settings.accounts,
                                                   tag_names.provenance_tags(provenance))
        distribution_arn = resources.ensure_distribution(self.ib, self.name, distribution, self.token("distribution"))
        return self.ib.create_image(
            imageRecipeArn=recipe_arn, infrastructureConfigurationArn=infrastructure_arn,
            distributionConfigurationArn=distribution_arn,
            imageTestsConfiguration={"imageTestsEnabled": tests, "timeoutMinutes": TEST_TIMEOUT_MINUTES},
            enhancedImageMetadataEnabled=True,
            tags={tag_names.MANAGED: "true", tag_names.IMAGE: self.name, tag_names.VERSION: version},
            clientToken=self.token("image"))["imageBuildVersionArn"]

    def _provenance(self) -> Provenance:
        git = git_facts(self.b.project.root)
        return Provenance(
            image=self.name, version=self.version or "", git_commit=git.commit, git_message=git.message,
            git_branch=git.branch, git_dirty=git.dirty, build_time=utc_now(), base_image=self.plan.base_ami,
            base_digest=self.plan.base_ami, input_digest=self.plan.digest, bakery_version=__version__,
            roles={p.role: p.role_digest for p in self.plan.planned}, artifacts=self.plan.artifacts,
            requirements=self.plan.requirements,
        )

    def _cancel(self) -> None:
        """Stop a build that is still running, so no AMI appears for a version the catalog no longer holds."""
        if not self.build_arn:
            return
        try:
            self.ib.cancel_image_creation(imageBuildVersionArn=self.build_arn, clientToken=self.token("cancel"))
            self.b.progress.note(f"{self.name}: cancelled Image Builder build {self.build_arn}")
        except (ClientError, BotoCoreError, OperationError) as exc:  # the original error matters; say what is left
            log.warning("could not cancel %s: %s", self.build_arn, exc)
            self.b.progress.note(f"{self.name}: could not cancel Image Builder build {self.build_arn} ({exc}); "
                                 "cancel it in the console")
