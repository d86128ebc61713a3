"""The shipped provisioners of packer/aws.pkr.hcl, run for real by Debian's packer against a podman container.

No EC2 here, so the amazon-ebs source is swapped for Packer's docker source (podman
through the podman-docker shim). Everything that talks to the instance is as shipped
and as bake.py passes it: the ansible provisioner through Packer's SSH adapter with
the SSH settings OpenSSH 9 needs for it, and packer/testinfra.sh running the image's
testinfra suite through that same adapter. The report becomes the verification.
(The file/shell provisioners need sudo and scp, which the minimal base lacks: cut.)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bakery import podman
from bakery.aws import tags
from bakery.base_image import build_base
from tests.aws import test_packer
from tests.aws.test_packer import bake_for
from tests.conftest import REPO

pytestmark = pytest.mark.aws
aws_project = test_packer.aws_project  # the fixture: the fixture project with the Packer files and a base AMI in moto

IMAGE_SUITE = '''
import os


def test_the_role_baked_its_file(host):
    assert host.file("/etc/first-greeting").exists


def test_the_suite_knows_the_version(host):
    assert os.environ["BAKERY_VERIFY_VERSION"] == "20261129.007"


def test_a_check_that_fails(host):
    assert host.file("/etc/bakery-never-made").exists
'''


def docker_instead_of_ec2(template: Path, base_ref: str, container: str) -> None:
    text = template.read_text()
    start = text.index('source "amazon-ebs" "image" {')
    end = text.index("\n}\n", start) + 3
    docker = (f'source "docker" "image" {{\n  image = "{base_ref}"\n  pull = false\n  discard = true\n'
              f'  run_command = ["-d", "-i", "-t", "--name", "{container}", "{{{{.Image}}}}", "/bin/sh"]\n}}\n')
    text = text[:start] + docker + text[end:]
    text = text.replace('sources = ["source.amazon-ebs.image"]', 'sources = ["source.docker.image"]')
    while (block := re.search(r'^  provisioner "(file|shell)" \{$', text, re.M)) is not None:
        text = text[:block.start()] + text[text.index("\n  }\n", block.end()) + len("\n  }\n"):]
    assert text.count('provisioner "ansible"') == 2
    template.write_text(text)


def test_ansible_and_testinfra_reach_the_instance_through_packers_adapter(aws_project, tmp_path, monkeypatch):
    base = build_base("bookworm", REPO / ".bakery" / "tmp")
    # one task
    (aws_project / "playbooks" / "adapter.yml").write_text("- hosts: all\n  gather_facts: false\n  roles: [first]\n")
    (aws_project / "tests" / "images").mkdir(parents=True)
    (aws_project / "tests" / "images" / "test_adapter.py").write_text(IMAGE_SUITE)
    shim = tmp_path / "bin"  # the podman-docker shim's `docker`, ahead of any docker client that cannot talk to podman
    shim.mkdir()
    os.symlink("/usr/bin/docker", shim / "docker")
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")

    bake_ = bake_for(aws_project, "20261129.007", image="adapter")
    container = f"bakery-test-packer-{bake_.run.id.rsplit('-', 1)[-1]}"
    bake_.template = tmp_path / "docker.pkr.hcl"
    shutil.copy(aws_project / "packer" / "aws.pkr.hcl", bake_.template)
    docker_instead_of_ec2(bake_.template, base.ref, container)
    bake_.packer = shutil.which("packer")
    var_file = bake_.write_inputs(bake_.provenance())
    text = (var_file.read_text().replace('"BAKERY_SUDO=1"', '"BAKERY_SUDO=0"')
            .replace('"ssh_username": "admin"', '"ssh_username": "root"'))
    var_file.write_text(text)  # the container is entered as root, without sudo; on EC2 it is admin with sudo
    try:
        bake_._run_packer(var_file)
    finally:
        podman.remove_container(container)

    result = bake_._verification(1.0)
    assert result is not None and result.tags[tags.VERIFIED] == "failed"  # what the AMIs get tagged with
    assert result.tags[tags.VERIFICATION].startswith(
        "packer build: testinfra on the build instance: 2 passed 1 failed 0 skipped: test_a_check")
    bake_._record_verification(result)
    verification = bake_.b.catalog.verifications("adapter", "20261129.007")[0]
    assert verification["passed"] is False  # one check failed: recorded, and the bake itself went on
    assert "2 passed, 1 failed, 0 skipped: test_a_check_that_fails" in verification["summary"]
    assert "tests/images/test_adapter.py" in verification["summary"]
    assert (bake_.run.path / "testinfra-build.xml").is_file()
