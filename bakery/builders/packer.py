"""The aws builder: bake an AMI with Packer's amazon-ebs builder and the same playbook as the local target.

Flow: resolve the base AMI, compute the input digest (role layer keys chained on
the base AMI id), return the existing AMI tagged with that digest if there is one
(Packer never starts), otherwise reserve a version, write Packer's inputs into
the run directory, run `packer build` (home region only) streaming its output as
progress, read the AMI id from the manifest, wait until EC2 shows it with its
tags, tag it and its snapshots with the build instance's test result
(bakery:verified, for people), copy it to the other regions (tagged on
creation), write the verification record naming every region's AMI, and only
then mark the version ready. A failure or an interrupt discards the reservation
and deregisters what this run registered (its bakery:run tag or its AMI name),
never another bake's AMI of the same version.

This module decides whether to bake; the bake itself is bakery.builders.packer_bake,
running Packer and reading its output bakery.builders.packer_run.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from bakery.aws import amis, clients
from bakery.aws.settings import check_packer_network
from bakery.builders.ami import AmiBuilder, region_keys
from bakery.builders.base import BuildOptions, BuildResult
from bakery.builders.packer_bake import BakePlan, PackerBake
from bakery.config import ImageDefinition
from bakery.deps.gate import check_lock, shared_lock
from bakery.errors import ConfigError
from bakery.layers import input_digest, plan_layers
from bakery.runs import Run
from bakery.signals import cancellable

log = logging.getLogger("bakery.build")

TEMPLATE = Path("packer") / "aws.pkr.hcl"


class PackerBuilder(AmiBuilder):

    def build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
        # Held for the whole bake: `bake.py deps` cannot swap an install while the bake reads .bakery/galaxy.
        with shared_lock(self.project.root, on_wait=lambda: self.progress.note("waiting for bake.py deps to finish")):
            return self._build(definition, options, run)

    def _build(self, definition: ImageDefinition, options: BuildOptions, run: Run) -> BuildResult:
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
        requirements = check_lock(self.project.root)  # before any AWS call, and before a cached AMI is reused
        settings = self.project.aws
        check_packer_network(settings)
        region = clients.resolve_region(settings.region or None)
        keys = region_keys(settings, region)  # no key reaches Packer's key check (packer/aws.pkr.hcl): EC2 takes them
        clients.check_credentials()
        base_ami = amis.resolve_base_ami(clients.client("ssm", region), settings.base_ami_parameter, settings.base_ami)
        extra_vars = {"bakery_image": definition.name, "bakery_target": self.target, **options.extra_vars}
        role_inputs, role_vars = self.artifact_inputs(definition)
        planned = plan_layers(definition, base_ami, extra_vars, role_inputs)
        digest = input_digest(planned, base_ami)
        log.info("image %s: base AMI %s in %s, input digest %s", definition.name, base_ami, region, digest)
        return BakePlan(region=region, base_ami=base_ami, keys=keys, planned=planned, digest=digest,
                        extra_vars={**extra_vars, **_merged(role_vars)},
                        artifacts={v["artifact"]: v["version"] for v in role_inputs.values()},
                        requirements=requirements)

    def check_tools(self, template: Path) -> str:
        """Packer on PATH and the template in the project, or one line saying what to do."""
        packer = shutil.which("packer")
        if not packer:
            raise ConfigError("packer is not installed (needed by --builder packer): "
                              "run make setup, which installs Debian's packer")
        if not template.is_file():
            raise ConfigError(f"{template}: Packer template not found; copy packer/aws.pkr.hcl and packer/testinfra.sh "
                              "from bakery into the project (or use --builder imagebuilder)")
        return packer


def _merged(role_vars: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One playbook run gets every role's artifact variables (they are prefixed with the role's name)."""
    merged: dict[str, Any] = {}
    for values in role_vars.values():
        merged.update(values)
    return merged
