"""The Packer builder against moto server: the template Debian's packer validates, manifests, tags, reuse, real builds.

The end-to-end tests run the real `packer build` (Debian's 1.6.6) of packer/aws.pkr.hcl
against moto server: the template is used as shipped except that its provisioners
are cut (there is no instance to SSH into) and the source talks to moto
(communicator none, custom_endpoint_ec2). Packer really launches, images, copies
and tags in moto; bake.py really parses its manifest and checks what it registered.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from botocore.exceptions import ClientError

from bakery.aws import amis, clients, tags
from bakery.builders.base import BuildOptions
from bakery.builders.packer import PackerBuilder
from bakery.builders.packer_bake import PackerBake
from bakery.builders.packer_run import PackerFailure, packer_env, parse_manifest, read_output_line
from bakery.catalog import open_catalog
from bakery.config import Project
from bakery.errors import ConfigError, OperationError
from bakery.progress import Progress
from bakery.runs import Run
from bakery.signals import Cancellation
from tests.aws.test_amis import register_ami
from tests.aws.test_retries import FailFirst
from tests.conftest import REPO, bake

pytestmark = pytest.mark.aws

BASE_PARAMETER = "/test/debian/12/amd64"
MOTO_EBS_AMI = "ami-03cf127a"  # in moto 5.2.5's bundled public AMIs (requirements.txt pins moto)
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
EU_KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000"


@pytest.fixture
def aws_project(project: Path, aws) -> Path:
    """The fixture project with the shipped Packer files, two regions, and a base AMI named by an SSM parameter."""
    shutil.copytree(REPO / "packer", project / "packer", ignore=shutil.ignore_patterns("local.pkr.hcl"))
    settings = yaml.safe_load((project / "bakery.yml").read_text())
    settings["aws"] = {"region": "us-east-1", "regions": ["eu-west-1"], "base_ami_parameter": BASE_PARAMETER}
    (project / "bakery.yml").write_text(yaml.safe_dump(settings))
    clients.client("ssm").put_parameter(Name=BASE_PARAMETER, Value=moto_ebs_ami(), Type="String")
    return project


def moto_ebs_ami() -> str:
    """One of moto's built-in public AMIs with an EBS root.

    Packer's amazon-ebs insists on one; register_image makes 'standard'.
    """
    # by id: listing all of moto's takes 2 s
    image = clients.client("ec2").describe_images(ImageIds=[MOTO_EBS_AMI])["Images"][0]
    assert image["RootDeviceType"] == "ebs", (f"moto's {MOTO_EBS_AMI} changed; "
                                              "pick another EBS-root AMI from moto's amis.json")
    return MOTO_EBS_AMI


def builder_for(root: Path) -> PackerBuilder:
    project = Project(root)
    return PackerBuilder(project, open_catalog(project.state_dir), Progress(io.StringIO()))


def for_moto(template: Path, endpoint: str, *, drop_tags: bool = False) -> None:
    """Cut the provisioners (no instance to reach) and point the source at moto; everything else stays as shipped."""
    text = template.read_text()
    while (start := re.search(r'^  provisioner "[^"]+" \{$', text, re.M)) is not None:
        end = text.index("\n  }\n", start.end()) + len("\n  }\n")
        text = text[:start.start()] + text[end:]
    moto = (f'communicator = "none"\n  custom_endpoint_ec2 = "{endpoint}"\n  skip_credential_validation = true\n'
            '  skip_metadata_api_check = true\n  skip_region_validation = true')
    text = text.replace('communicator              = "ssh"', moto)
    if drop_tags:
        text = (text.replace("tags            = var.tags", "tags            = {}")
                .replace("snapshot_tags   = var.tags", "snapshot_tags   = {}"))
    assert 'provisioner "' not in text and "custom_endpoint_ec2" in text
    template.write_text(text)


@pytest.fixture
def packer_offline(monkeypatch):
    """Packer polls fast, and anything it tried beyond loopback would hit a dead proxy instead of the internet."""
    monkeypatch.setenv("AWS_POLL_DELAY_SECONDS", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def all_amis(region: str) -> list[dict]:
    return clients.client("ec2", region).describe_images(Owners=["self"])["Images"]


# -- the template ---------------------------------------------------------------------------------


def bake_for(root: Path, version: str, image: str = "sample") -> PackerBake:
    """A PackerBake as PackerBuilder.build makes one, up to (not including) running Packer."""
    builder = builder_for(root)
    definition = builder.project.image(image)
    plan = builder.plan(definition, BuildOptions())
    made = PackerBake(builder, definition, Run.start(builder.project.state_dir, "build"), Cancellation(), plan,
                      packer="packer", template=root / "packer/aws.pkr.hcl", started=0)
    made.version = version
    return made


@pytest.mark.parametrize("shared", [False, True], ids=["home-region-only", "two-regions-shared-with-an-account"])
def test_template_validates_with_exactly_the_variables_the_builder_passes(aws_project, shared):
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    playbook = aws_project / "playbooks/sample.yml"
    # a bake ignores hosts:
    playbook.write_text(playbook.read_text().replace("hosts: all", "hosts: webservers:&bookworm"))
    if shared:
        settings["aws"].update(accounts=["210987654321"], kms_key_id=KMS_KEY,
                               region_kms_key_ids={"eu-west-1": EU_KMS_KEY},
                               subnet_id="subnet-0abc", security_group_ids=["sg-0abc"])
    else:
        settings["aws"]["regions"] = []
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    bake_ = bake_for(aws_project, "20261129.001")
    var_file = bake_.write_inputs(bake_.provenance())

    passed = json.loads(var_file.read_text())
    declared = re.findall(r'^variable "(\w+)"', (REPO / "packer/aws.pkr.hcl").read_text(), re.M)
    assert sorted(passed) == sorted(declared)
    accounts = ["210987654321"] if shared else []
    assert (passed["ami_regions"] == (["eu-west-1"] if shared else [])
            and passed["ami_users"] == passed["snapshot_users"] == accounts)
    assert passed["source_ami"] == bake_.plan.base_ami and passed["tags"][tags.INPUT_DIGEST] == bake_.plan.digest
    base = clients.client("ec2").describe_images(ImageIds=[bake_.plan.base_ami])["Images"][0]
    assert passed["root_device_name"] == base["RootDeviceName"]  # the base AMI's own root device, replaced not added to
    # copies are re-encrypted with their region's key
    assert passed["region_kms_key_ids"] == ({"eu-west-1": EU_KMS_KEY} if shared else {})
    assert passed["kms_key_id"] == (KMS_KEY if shared else "")
    assert json.loads(Path(passed["ansible_extra_vars_file"]).read_text())["bakery_target"] == "aws"
    assert passed["ansible_groups"] == ["bakery_build", "bookworm", "sample", "webservers"]
    proc = subprocess.run(["packer", "validate", f"-var-file={var_file}", str(REPO / "packer/aws.pkr.hcl")],
                          capture_output=True, text=True, check=False, timeout=60, env=packer_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("aws_settings", "refusal"), [
    ({"accounts": ["210987654321"]}, "aws.accounts needs aws.kms_key_id"),
    ({"accounts": ["210987654321"], "kms_key_id": KMS_KEY, "regions": ["eu-west-1", "us-west-2"],
      "region_kms_key_ids": {"eu-west-1": EU_KMS_KEY}},
     "aws.accounts needs a key for every region: .* has none for us-west-2"),
    ({"regions": ["eu-west-1", "us-west-2"], "region_kms_key_ids": {"us-west-2": EU_KMS_KEY}},
     "aws.region_kms_key_ids has no key for eu-west-1: Packer needs a key for every copied region"),
], ids=["shared-without-a-key", "shared-without-a-copied-regions-key", "some-copied-regions-without-a-key"])
def test_keys_that_cannot_work_are_refused_naming_what_is_missing(project, aws_settings, refusal):
    settings = yaml.safe_load((project / "bakery.yml").read_text())
    settings["aws"] = {"region": "us-east-1", **aws_settings}
    (project / "bakery.yml").write_text(yaml.safe_dump(settings))
    builder = builder_for(project)  # refused before any AWS call
    with pytest.raises(ConfigError, match=refusal):
        builder.plan(builder.project.image("sample"), BuildOptions())


def test_tags_carry_every_provenance_fact_sanitised(aws_project):
    bake_ = bake_for(aws_project, "20261129.002")
    provenance = bake_.provenance()
    provenance.git_message = "Fix <script>\n\"quoted\" & {braces} " + "x" * 400
    variables = bake_.variables(provenance)
    ami_tags = variables["tags"]
    assert ami_tags[tags.VERSION] == "20261129.002" and ami_tags[tags.MANAGED] == "true"
    assert (ami_tags[tags.GIT_MESSAGE].startswith("Fix script quoted braces xxx")
            and len(ami_tags[tags.GIT_MESSAGE]) == 255)
    assert all(len(v) <= 256 and re.fullmatch(r"[\w .:/=+\-@]*", v) for v in ami_tags.values())
    assert {tags.IMAGE, tags.INPUT_DIGEST, tags.GIT_COMMIT, tags.GIT_BRANCH, tags.GIT_DIRTY, tags.BUILD_TIME,
            tags.BASE_IMAGE, tags.BAKERY_VERSION, tags.ROLES} <= set(ami_tags)
    assert variables["run_tags"][tags.RUN] == ami_tags[tags.RUN] == bake_.run.id  # what a failed bake's undo looks for


# -- the manifest ---------------------------------------------------------------------------------


def test_manifest_gives_the_ami_per_region_of_the_last_run(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"builds": [
        {"name": "image", "artifact_id": "us-east-1:ami-0aaa,eu-west-1:ami-0bbb", "packer_run_uuid": "run-2"},
        {"name": "image", "artifact_id": "us-east-1:ami-0old", "packer_run_uuid": "run-1"},
        {"name": "image", "artifact_id": "us-east-1:ami-0ccc,eu-west-1:ami-0ddd,ap-south-1:ami-0eee",
         "packer_run_uuid": "run-2"},
    ], "last_run_uuid": "run-2"}))
    assert parse_manifest(manifest) == {"us-east-1": "ami-0ccc", "eu-west-1": "ami-0ddd", "ap-south-1": "ami-0eee"}

    manifest.write_text(json.dumps({"builds": [{"artifact_id": "us-east-1:ami-0aaa", "packer_run_uuid": "run-1"}],
                                    "last_run_uuid": "run-9"}))
    with pytest.raises(OperationError, match="no build of packer run run-9"):
        parse_manifest(manifest)
    manifest.write_text(json.dumps({"builds": [{"artifact_id": "Null", "packer_run_uuid": "r"}], "last_run_uuid": "r"}))
    with pytest.raises(OperationError, match="'Null' is not REGION:AMI-ID"):
        parse_manifest(manifest)
    with pytest.raises(OperationError, match="wrote no manifest"):
        parse_manifest(tmp_path / "missing.json")


def test_a_failing_provisioner_is_named_with_its_step_task_and_error(tmp_path):
    """Real Packer output (null source, a provisioner failing the way ansible does) read as bake.py reads it."""
    template = tmp_path / "failing.pkr.hcl"
    template.write_text('''source "null" "image" { communicator = "none" }
build {
  sources = ["source.null.image"]
  provisioner "shell-local" {
    inline = ["echo 'TASK [webapp : Install the application] ***'",
              "echo 'fatal: [default]: FAILED! => {\\"changed\\": false, \\"msg\\": \\"No package matching nginxx\\"}'",
              "exit 2"]
  }
}
''')
    proc = subprocess.run(["packer", "build", "-machine-readable", "-color=false", str(template)], capture_output=True,
                          text=True, check=False, timeout=60, env={**os.environ, "CHECKPOINT_DISABLE": "1"})
    assert proc.returncode != 0
    failure = PackerFailure()
    shown = [m for m in (read_output_line(line, failure) for line in proc.stdout.splitlines()) if m]
    assert failure.step.startswith("Running local shell script: ")
    assert failure.describe(proc.returncode) == (
        "task 'webapp : Install the application': fatal: [default]: FAILED! => "
        "{\"changed\": false, \"msg\": \"No package matching nginxx\"}; "
        "Script exited with non-zero exit status: 2.Allowed exit codes are: [0]")
    assert any("Provisioning step had errors" in m for m in shown)  # shown, but not taken for the failing step


# -- reuse ----------------------------------------------------------------------------------------


def test_unchanged_inputs_reuse_the_ami_without_packer(aws_project, tmp_path, monkeypatch):
    no_packer = tmp_path / "bin"  # bake.py runs with a PATH holding git and nothing else: no packer to run
    no_packer.mkdir()
    os.symlink(shutil.which("git"), no_packer / "git")
    monkeypatch.setenv("PATH", str(no_packer))

    builder = builder_for(aws_project)
    # nothing to reuse yet: Packer is needed
    with pytest.raises(ConfigError, match="packer is not installed .* run make setup"):
        builder.build(builder.project.image("sample"), BuildOptions(), Run.start(builder.project.state_dir, "build"))
    assert builder.catalog.versions("sample", status=None) == []

    digest = builder.plan(builder.project.image("sample"), BuildOptions()).digest
    ami = register_ami(clients.client("ec2"), "sample-20261101.007-abc123", {
        tags.MANAGED: "true", tags.IMAGE: "sample", tags.VERSION: "20261101.007", tags.INPUT_DIGEST: digest})
    again = bake(aws_project, "build", "sample", "--target", "aws", "--json")
    assert again.rc == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["reused"] is True and result["ref"] == ami and result["version"] == "20261101.007"
    run_dir = aws_project / ".bakery" / "runs" / result["run_id"]
    assert not (run_dir / "packer.vars.json").exists() and not (run_dir / "packer.log").exists()
    row = open_catalog(aws_project / ".bakery").version("sample", "20261101.007")
    # recorded: baked elsewhere
    assert row["status"] == "ready" and row["image_ref"] == ami and row["input_digest"] == digest


# -- real packer builds against moto --------------------------------------------------------------


def test_packer_build_registers_tagged_amis_that_bake_py_records(aws_project, aws, packer_offline, monkeypatch):
    for_moto(aws_project / "packer/aws.pkr.hcl", aws)
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    # each copy gets its region's key
    settings["aws"].update(kms_key_id=KMS_KEY, region_kms_key_ids={"eu-west-1": EU_KMS_KEY})
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    # The first look-up of one AMI in the home region answers InvalidAMIID.NotFound, as EC2 may just after registration.
    lagging = FailFirst("DescribeImages", "InvalidAMIID.NotFound", times=1, match="ImageId.1=")
    imds_requests: list[str] = []  # moto accepts ImdsSupport but does not keep it: record what bake.py sent
    make_client = clients.client

    def client_with_lagging_home_region(service, region=None, profile=None):
        made = make_client(service, region, profile)
        if (service, region) == ("ec2", "us-east-1"):
            lagging.attach(made)
        if service == "ec2":
            made.meta.events.register("before-send.ec2.ModifyImageAttribute",
                                      lambda request, **_: imds_requests.append(request.body))
        return made

    monkeypatch.setattr(clients, "client", client_with_lagging_home_region)
    suite = aws_project / "tests/images/test_sample.py"
    suite.parent.mkdir(parents=True)
    suite.write_text("def test_nginx(host):\n    assert host.service('nginx').is_running\n")
    builder = builder_for(aws_project)
    run = Run.start(builder.project.state_dir, "build")
    # What packer/testinfra.sh writes (its provisioner is cut here: no instance): one test failed on the build instance.
    (run.path / "testinfra-build.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="2" failures="1" errors="0" skipped="0">'
        '<testcase name="test_nginx"><failure message="not running"/></testcase><testcase '
        'name="test_ssh"/></testsuite></testsuites>')
    result = builder.build(builder.project.image("sample"), BuildOptions(), run)

    assert result.reused is False and result.ref.startswith("ami-")
    amis_by_region = result.provenance["amis"]
    assert set(amis_by_region) == {"us-east-1", "eu-west-1"} and amis_by_region["us-east-1"] == result.ref
    assert lagging.injected == 1 and lagging.passed >= 1  # not visible at first, then waited for
    for ami in amis_by_region.values():  # every instance launched from either AMI must use IMDSv2
        assert any(f"ImageId={ami}" in str(body) and "ImdsSupport.Value=v2.0" in str(body) for body in imds_requests)
    for region, ami in amis_by_region.items():
        ec2 = make_client("ec2", region)
        image = ec2.describe_images(ImageIds=[ami])["Images"][0]
        found = tags.from_tag_list(image["Tags"])
        assert found[tags.VERSION] == result.version and found[tags.INPUT_DIGEST] == result.input_digest
        assert found[tags.GIT_COMMIT] == result.provenance["git_commit"] and found[tags.RUN] == run.id
        assert (found[tags.VERIFIED] == "failed"
                and found[tags.VERIFICATION].endswith("1 passed 1 failed 0 skipped: test_nginx"))
        for snapshot in amis.snapshot_ids(image):
            snap_tags = tags.from_tag_list(ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["Tags"])
            assert ((snap_tags[tags.VERSION], snap_tags[tags.RUN], snap_tags[tags.VERIFIED])
                    == (result.version, run.id, "failed"))
    # Per-region keys take Packer's encrypting copy (moto keeps no KMS key to check): it copied, then removed its
    # intermediate AMI.
    assert "Copying/Encrypting AMI" in (run.path / "packer.log").read_text()
    assert [i["ImageId"] for i in all_amis("us-east-1")] == [result.ref]
    catalog = open_catalog(aws_project / ".bakery")
    row = catalog.version("sample", result.version)
    assert row["status"] == "ready" and row["image_ref"] == result.ref and row["provenance"]["amis"] == amis_by_region
    [verification] = catalog.verifications("sample", result.version)
    assert not verification["passed"] and "1 passed, 1 failed" in verification["summary"]

    again = builder.build(builder.project.image("sample"), BuildOptions(),
                          Run.start(builder.project.state_dir, "build"))
    assert again.reused and again.ref == result.ref and again.version == result.version


def test_failed_bake_leaves_no_ami_no_snapshot_and_no_version(aws_project, aws, packer_offline, monkeypatch):
    for_moto(aws_project / "packer/aws.pkr.hcl", aws, drop_tags=True)  # Packer succeeds, the tag check after it fails
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    settings["aws"]["regions"] = []  # one region keeps it short; the undo walks every configured region alike
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    removed: dict[str, list[str]] = {}
    deregister = amis.deregister_with_snapshots

    def recording_deregister(ec2, ami_id, **kwargs):  # the real one, remembering which snapshots it deleted
        removed[ami_id] = deregister(ec2, ami_id, **kwargs)
        return removed[ami_id]

    monkeypatch.setattr(amis, "deregister_with_snapshots", recording_deregister)
    builder = builder_for(aws_project)
    run = Run.start(builder.project.state_dir, "build")
    with pytest.raises(OperationError, match=r"lacks the provenance tags .*bakery:image"):
        builder.build(builder.project.image("sample"), BuildOptions(), run)
    registered = parse_manifest(run.path / "packer-manifest.json")  # what Packer made before bake.py refused it
    assert set(removed) == set(registered.values()) and all(removed.values())
    assert all_amis("us-east-1") == []
    for snapshots in removed.values():
        with pytest.raises(ClientError, match="InvalidSnapshot.NotFound"):
            clients.client("ec2").describe_snapshots(SnapshotIds=snapshots)
    assert builder.catalog.versions("sample", status=None) == []


def test_undo_removes_only_what_this_run_registered(aws_project):
    """Two catalogs can reserve the same version: a failed bake must not deregister the other bake's AMI."""
    bake_ = bake_for(aws_project, "20261129.004")
    bake_.variables(bake_.provenance())  # names this run's AMI, as before Packer starts
    ec2 = clients.client("ec2")
    same_version = {tags.MANAGED: "true", tags.IMAGE: "sample", tags.VERSION: "20261129.004"}
    mine_tagged = register_ami(ec2, "sample-20261129.004-copy", {**same_version, tags.RUN: bake_.run.id})
    mine_named = register_ami(ec2, bake_.ami_name, {})  # registered, not yet tagged
    theirs = register_ami(ec2, "sample-20261129.004-b0b0b0",
                          {**same_version, tags.RUN: "20261129T000000Z-build-b0b0b0"})
    bake_._undo()
    assert [i["ImageId"] for i in all_amis("us-east-1")] == [theirs]
    assert amis.describe_ami(ec2, mine_tagged) is None and amis.describe_ami(ec2, mine_named) is None


def test_packer_failure_names_the_failing_step(aws_project, aws, packer_offline):
    for_moto(aws_project / "packer/aws.pkr.hcl", aws)
    # moto registers it with a 'standard' root: Packer refuses it
    not_ebs = register_ami(clients.client("ec2"), "debian-12-not-ebs", {})
    clients.client("ssm").put_parameter(Name=BASE_PARAMETER, Value=not_ebs, Type="String", Overwrite=True)
    builder = builder_for(aws_project)
    with pytest.raises(OperationError) as caught:
        builder.build(builder.project.image("sample"), BuildOptions(), Run.start(builder.project.state_dir, "build"))
    message = str(caught.value)
    # not a clean-up step after it
    assert message.startswith("packer build of sample failed at 'Launching a source AWS instance...': ")
    assert "The provided source AMI has an invalid root device type. Expected 'ebs', got 'standard'." in message
    assert message.endswith("packer.log)")
    assert builder.catalog.versions("sample", status=None) == []

