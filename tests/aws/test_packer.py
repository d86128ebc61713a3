"""The Packer builder against moto server: the template Debian's packer validates, manifests, tags, reuse, real builds.

The end-to-end tests run the real `packer build` (Debian's 1.6.6) of packer/aws.pkr.hcl
against moto server: the template is used as shipped except that its provisioners
are cut (there is no instance to SSH into) and the source talks to moto
(communicator none, custom_endpoint_ec2). Packer really launches, images, copies
and tags in moto; bake.py really parses its manifest and checks what it registered.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError

from bakery.aws import adopt, amis, clients, tags, verification_record
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
    group = clients.client("ec2").create_security_group(GroupName="bakery-build", Description="SSH from bake.py")
    settings["aws"] = {"region": "us-east-1", "regions": ["eu-west-1"], "base_ami_parameter": BASE_PARAMETER,
                       "security_group_ids": [group["GroupId"]]}  # Packer then creates no temporary group
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


class ManagedOnly:
    """docs/aws-iam-policy.json's rule, enforced at the moment of each call: bakery modifies, deregisters and deletes
    only AMIs and snapshots that already carry bakery:managed=true; anything else is refused as AWS would refuse it."""

    GUARDED = {"ModifyImageAttribute": "ImageId", "DeregisterImage": "ImageId",
               "ModifySnapshotAttribute": "SnapshotId", "DeleteSnapshot": "SnapshotId"}

    def __init__(self):
        self.allowed: list[tuple[str, str]] = []  # (operation, resource) in call order
        self.refused: list[tuple[str, str]] = []

    def attach(self, made):
        """Guard one client's calls (an ec2 client; others pass through)."""
        if made.meta.service_model.service_name == "ec2":
            region = made.meta.region_name
            for operation in self.GUARDED:
                made.meta.events.register(f"before-parameter-build.ec2.{operation}",
                                          lambda params, model, **_: self._check(region, params, model))
        return made

    def _check(self, region, params, model):
        resource = params[self.GUARDED[model.name]]
        ec2 = boto3.client("ec2", region)
        if resource.startswith("ami-"):
            found = ec2.describe_images(ImageIds=[resource])["Images"]
        else:
            found = ec2.describe_snapshots(SnapshotIds=[resource])["Snapshots"]
        if found and tags.from_tag_list(found[0].get("Tags")).get(tags.MANAGED) == "true":
            self.allowed.append((model.name, resource))
            return
        self.refused.append((model.name, resource))
        raise clients.AccessDenied(f"ec2:{model.name}", "UnauthorizedOperation", f"{resource} is not bakery-managed")


def guarded_clients(monkeypatch, guard: ManagedOnly) -> None:
    """Every ec2 client bakery makes (bakery.aws.clients.client) is guarded."""
    make_client = clients.client
    monkeypatch.setattr(clients, "client",
                        lambda service, region=None, profile=None: guard.attach(make_client(service, region, profile)))


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
    # Packer builds in the home region only: bakery copies the tagged AMI itself (no intermediate AMI, no untagged copy)
    assert {"ami_regions", "region_kms_key_ids", "encrypt_boot"}.isdisjoint(passed)
    assert passed["region"] == "us-east-1"
    assert passed["source_ami"] == bake_.plan.base_ami and passed["tags"][tags.INPUT_DIGEST] == bake_.plan.digest
    base = clients.client("ec2").describe_images(ImageIds=[bake_.plan.base_ami])["Images"][0]
    assert passed["root_device_name"] == base["RootDeviceName"]  # the base AMI's own root device, replaced not added to
    assert passed["kms_key_id"] == (KMS_KEY if shared else "")  # the build volume's key, so the AMI's snapshot's
    assert json.loads(Path(passed["ansible_extra_vars_file"]).read_text())["bakery_target"] == "aws"
    assert passed["ansible_groups"] == ["bakery_build", "bookworm", "sample", "webservers"]
    proc = subprocess.run(["packer", "validate", f"-var-file={var_file}", str(REPO / "packer/aws.pkr.hcl")],
                          capture_output=True, text=True, check=False, timeout=60, env=packer_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def source_settings(template: Path, block: str = "") -> dict[str, str]:
    """The amazon-ebs source's own settings (name -> expression as written), or those of its nested `block`; other
    nested blocks and comments left out."""
    lines = template.read_text().split('source "amazon-ebs" "image" {\n', 1)[1].splitlines()
    if block:
        lines = "\n".join(lines).split(f"\n  {block} {{\n", 1)[1].splitlines()
    settings, depth = {}, 0
    for line in lines:
        code = line.split("#", 1)[0]
        if depth == 0 and (assignment := re.match(r"^\s*(\w+)\s*=\s*(.+?)\s*$", code)):
            settings[assignment[1]] = assignment[2]
        depth += code.count("{") - code.count("}")
        if depth < 0:  # the source's (or the block's) closing brace
            return settings
    raise AssertionError(f"the amazon-ebs source's {block or 'block'} never closes")


def test_template_leaves_description_and_sharing_to_bake_py():
    """Packer 1.6.6 modifies AMI attributes before it tags: under the shipped policy those calls are refused, so the
    template must give Packer nothing to modify (bake.py does it on the tagged AMI)."""
    settings = source_settings(REPO / "packer/aws.pkr.hcl")
    assert {"ami_name", "tags", "snapshot_tags", "run_tags"} <= set(settings)  # the parse works
    modified_before_tags = {"ami_description", "ami_users", "ami_groups", "ami_product_codes", "snapshot_users",
                            "snapshot_groups", "ami_org_arns", "ami_ou_arns"}
    assert modified_before_tags.isdisjoint(settings), sorted(modified_before_tags & set(settings))
    assert settings["tags"] == settings["snapshot_tags"] == "var.tags"  # Packer's CreateTags: bakery:managed=true


def test_packer_builds_in_the_home_region_only_and_encrypts_through_the_build_volume():
    """Packer 1.6.6 names an intermediate AMI random.AlphaNum(7) and removes it untagged (StepAMIRegionCopy's
    Cleanup) whenever encrypt_boot is true; its copies (ami_regions) are made without tags. So the template sets
    neither: Packer registers exactly one AMI, named by bake.py, from a build volume encrypted with the home key
    (CreateImage keeps the volume's key on the snapshot), and bake.py copies the tagged AMI itself."""
    template = (REPO / "packer/aws.pkr.hcl").read_text()
    settings = source_settings(REPO / "packer/aws.pkr.hcl")
    copying = {"ami_regions", "region_kms_key_ids", "encrypt_boot", "kms_key_id", "skip_save_build_region",
               "ami_block_device_mappings"}
    assert copying.isdisjoint(settings), sorted(copying & set(settings))
    assert not re.search(r'^variable "(ami_regions|region_kms_key_ids)"', template, re.M)
    volume = source_settings(REPO / "packer/aws.pkr.hcl", "launch_block_device_mappings")
    assert (volume["device_name"], volume["encrypted"], volume["kms_key_id"]) == (
        "var.root_device_name", "true", "var.kms_key_id")


MRK_ID = "mrk-1234abcd12ab34cd56ef1234567890ab"
EU_MRK_ARN = f"arn:aws:kms:eu-west-1:123456789012:key/{MRK_ID}"


@pytest.mark.parametrize(("aws_settings", "refusal"), [
    ({"accounts": ["210987654321"]}, "aws.accounts needs aws.kms_key_id"),
    ({"accounts": ["210987654321"], "kms_key_id": KMS_KEY, "regions": ["eu-west-1", "us-west-2"],
      "region_kms_key_ids": {"eu-west-1": EU_KMS_KEY}},
     "aws.accounts needs a key for every region: .* has none for us-west-2"),
    ({"security_group_ids": []}, r"^bakery.yml: aws.security_group_ids is empty and aws.builder is packer"),
], ids=["shared-without-a-key", "shared-without-a-copied-regions-key", "no-security-groups"])
def test_keys_that_cannot_work_are_refused_before_the_bake(project, aws_settings, refusal):
    settings = yaml.safe_load((project / "bakery.yml").read_text())
    settings["aws"] = {"region": "us-east-1", "security_group_ids": ["sg-0abc"], **aws_settings}
    (project / "bakery.yml").write_text(yaml.safe_dump(settings))
    builder = builder_for(project)  # refused before any AWS call
    with pytest.raises(ConfigError, match=refusal):
        builder.plan(builder.project.image("sample"), BuildOptions())


def test_multi_region_keys_and_keys_for_some_regions_only_go_to_ec2_not_to_packer(aws_project):
    """Packer 1.6.6 validates only the AMI-level kms_key_id and region_kms_key_ids (ValidateKmsKey, which refuses
    mrk-...); the template sets neither, and the build volume's kms_key_id is never validated by Packer. So a
    multi-Region key is taken wherever EC2 takes it, and a copied region may go without a key when nothing is shared
    (its copy keeps the source's encryption under that region's default key)."""
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    settings["aws"].update(kms_key_id=MRK_ID, regions=["eu-west-1", "us-west-2"],
                           region_kms_key_ids={"eu-west-1": EU_MRK_ARN})
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    bake_ = bake_for(aws_project, "20261129.010")
    assert bake_.plan.keys == {"us-east-1": MRK_ID, "eu-west-1": EU_MRK_ARN, "us-west-2": ""}
    var_file = bake_.write_inputs(bake_.provenance())
    assert json.loads(var_file.read_text())["kms_key_id"] == MRK_ID
    assert validate_errors(var_file) == ""


def validate_errors(var_file: Path) -> str:
    """`packer validate` of the shipped template with these variables: '' when valid, else its output."""
    proc = subprocess.run(["packer", "validate", f"-var-file={var_file}", str(REPO / "packer/aws.pkr.hcl")],
                          capture_output=True, text=True, check=False, timeout=60, env=packer_env())
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


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
    # Packer made one AMI, under the run's name (no intermediate AMI); bake.py copied it
    assert "Copying/Encrypting AMI" not in (run.path / "packer.log").read_text()
    assert [(i["ImageId"], i["Name"]) for i in all_amis("us-east-1")] == [(result.ref, bake_ami_name(run, result))]
    catalog = open_catalog(aws_project / ".bakery")
    row = catalog.version("sample", result.version)
    assert row["status"] == "ready" and row["image_ref"] == result.ref and row["provenance"]["amis"] == amis_by_region
    [verification] = catalog.verifications("sample", result.version)
    assert not verification["passed"] and "1 passed, 1 failed" in verification["summary"]
    # the write-once record adopt trusts (not the tag): every region's AMI and snapshots, the report's digest
    record = verification_record.read_record(make_client("ssm", "us-east-1"), "sample", result.version)
    assert record is not None and record["passed"] is False and record["run_id"] == run.id
    assert record["amis"] == amis_by_region and record["summary"] == verification["summary"]
    assert record["snapshots"] == {region: sorted(amis.snapshot_ids(make_client("ec2", region).describe_images(
        ImageIds=[ami])["Images"][0])) for region, ami in amis_by_region.items()}
    assert record["report_sha256"] == hashlib.sha256((run.path / "testinfra-build.xml").read_bytes()).hexdigest()

    again = builder.build(builder.project.image("sample"), BuildOptions(),
                          Run.start(builder.project.state_dir, "build"))
    assert again.reused and again.ref == result.ref and again.version == result.version


def bake_ami_name(run: Run, result) -> str:
    return f"sample-{result.version}-{run.id.rsplit('-', 1)[-1]}"


def test_bake_py_describes_the_amis_only_once_packer_tagged_them_and_shares_them_with_no_account(
        aws_project, aws, packer_offline, monkeypatch):
    """Packer makes no attribute call (it would precede its tags); bake.py's own come after, on tagged resources.
    aws.accounts get nothing from a bake: distribute shares a version once it passed verify --target aws."""
    for_moto(aws_project / "packer/aws.pkr.hcl", aws)
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    settings["aws"].update(accounts=["210987654321"], kms_key_id=KMS_KEY, region_kms_key_ids={"eu-west-1": EU_KMS_KEY})
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    guard = ManagedOnly()
    guarded_clients(monkeypatch, guard)
    descriptions: list[str] = []  # moto does not keep a Description set by ModifyImageAttribute: what bake.py sent
    make_client = clients.client

    def recording(service, region=None, profile=None):
        made = make_client(service, region, profile)
        if service == "ec2":
            made.meta.events.register("before-parameter-build.ec2.ModifyImageAttribute",
                                      lambda params, **_: descriptions.append(
                                          f"{params['ImageId']}: {params['Description']['Value']}")
                                      if "Description" in params else None)
        return made

    monkeypatch.setattr(clients, "client", recording)
    builder = builder_for(aws_project)
    run = Run.start(builder.project.state_dir, "build")
    result = builder.build(builder.project.image("sample"), BuildOptions(), run)

    packer_log = (run.path / "packer.log").read_text()
    assert "Adding tags to AMI" in packer_log and "Modifying attributes on" not in packer_log
    assert guard.refused == [] and guard.allowed  # every attribute call of bake.py found bakery:managed=true
    built = result.provenance["amis"]
    assert set(built) == {"us-east-1", "eu-west-1"}
    described = f"sample {result.version} from {result.provenance['git_commit'][:12]} (bakery)"
    assert descriptions == [f"{built['us-east-1']}: {described}"]  # the copy gets it from CopyImage, which moto keeps
    assert boto3.client("ec2", "eu-west-1").describe_images(ImageIds=[built["eu-west-1"]])["Images"][0][
        "Description"] == described
    for region, ami in built.items():
        ec2 = boto3.client("ec2", region)
        permissions = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
        assert permissions == []
        [snapshot] = amis.snapshot_ids(ec2.describe_images(ImageIds=[ami])["Images"][0])
        volumes = ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
        assert volumes["CreateVolumePermissions"] == []
        assert ("ModifySnapshotAttribute", snapshot) not in guard.allowed
    assert ("ModifyImageAttribute", built["us-east-1"]) in guard.allowed  # ImdsSupport and Description


class TagOnCreate:
    """What AWS does with CopyImage's TagSpecifications (moto 5.2.5 ignores them): the copy and its snapshots carry
    the tags from the moment CopyImage answers. Applied right after the call, and every CopyImage request kept."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []  # (region, CopyImage's parameters)

    def attach(self, made):
        if made.meta.service_model.service_name == "ec2":
            region = made.meta.region_name
            made.meta.events.register("before-parameter-build.ec2.CopyImage",
                                      lambda params, **_: self.requests.append((region, dict(params))))
            made.meta.events.register("after-call.ec2.CopyImage",
                                      lambda parsed, **_: self._tag(region, parsed["ImageId"]))
        return made

    def _tag(self, region: str, ami: str) -> None:
        ec2 = boto3.client("ec2", region)
        image = ec2.describe_images(ImageIds=[ami])["Images"][0]
        for spec in self.requests[-1][1].get("TagSpecifications", []):
            resources = [ami] if spec["ResourceType"] == "image" else amis.snapshot_ids(image)
            ec2.create_tags(Resources=resources, Tags=spec["Tags"])


def wrapped_clients(monkeypatch, *wrappers) -> None:
    """Every client bakery makes (bakery.aws.clients.client) passes through each wrapper's attach."""
    make_client = clients.client

    def client(service, region=None, profile=None):
        made = make_client(service, region, profile)
        for wrapper in wrappers:
            wrapper.attach(made)
        return made

    monkeypatch.setattr(clients, "client", client)


@pytest.fixture
def build_volumes(monkeypatch) -> list[tuple[str, bool, str | None]]:
    """Every EBS volume moto server (in this process) makes for an instance Packer launches: device, encrypted, key."""
    from moto.ec2.models.instances import Instance

    made: list[tuple[str, bool, str | None]] = []
    add_block_device = Instance.add_block_device

    def recording(self, size, device_path, snapshot_id, encrypted, delete_on_termination, kms_key_id, volume_type):
        made.append((device_path, str(encrypted).lower() == "true", kms_key_id))
        return add_block_device(self, size, device_path, snapshot_id, encrypted, delete_on_termination, kms_key_id,
                                volume_type=volume_type)

    monkeypatch.setattr(Instance, "add_block_device", recording)
    return made


PASSING_REPORT = ('<testsuites><testsuite name="pytest" tests="1" failures="0" errors="0" skipped="0">'
                  '<testcase name="test_nginx"/></testsuite></testsuites>')


def copying_project(aws_project: Path, endpoint: str) -> None:
    """Two regions, a key in each, shared with one account; the image has a suite (its report is written per test)."""
    for_moto(aws_project / "packer/aws.pkr.hcl", endpoint)
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    settings["aws"].update(accounts=["210987654321"], kms_key_id=KMS_KEY, region_kms_key_ids={"eu-west-1": EU_KMS_KEY})
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    suite = aws_project / "tests/images/test_sample.py"
    suite.parent.mkdir(parents=True)
    suite.write_text("def test_nginx(host):\n    assert host.service('nginx').is_running\n")


def test_a_bake_copies_its_tagged_ami_itself_each_copy_tagged_on_create_with_its_regions_key(
        aws_project, aws, packer_offline, monkeypatch, build_volumes, tmp_path):
    copying_project(aws_project, aws)
    guard, tag_on_create = ManagedOnly(), TagOnCreate()
    wrapped_clients(monkeypatch, guard, tag_on_create)
    builder = builder_for(aws_project)
    run = Run.start(builder.project.state_dir, "build")
    (run.path / "testinfra-build.xml").write_text(PASSING_REPORT)  # what packer/testinfra.sh writes
    result = builder.build(builder.project.image("sample"), BuildOptions(), run)

    built = result.provenance["amis"]
    home, copy = built["us-east-1"], built["eu-west-1"]
    # Packer: one build volume encrypted with the home key (the AMI's snapshot keeps it), one AMI, no copy of its own
    assert [(encrypted, key) for _, encrypted, key in build_volumes] == [(True, KMS_KEY)]
    assert "Copying/Encrypting AMI" not in (run.path / "packer.log").read_text()
    assert [(i["ImageId"], i["Name"]) for i in all_amis("us-east-1")] == [(home, bake_ami_name(run, result))]
    # bake.py: one CopyImage of the tagged home AMI, asking for the region's key and the tags on AMI and snapshots
    [(region, request)] = tag_on_create.requests
    assert (region, request["SourceRegion"], request["SourceImageId"]) == ("eu-west-1", "us-east-1", home)
    assert (request["Encrypted"], request["KmsKeyId"]) == (True, EU_KMS_KEY)
    requested = {spec["ResourceType"]: tags.from_tag_list(spec["Tags"]) for spec in request["TagSpecifications"]}
    home_tags = tags.from_tag_list(amis.describe_ami(clients.client("ec2"), home)["Tags"])
    assert set(requested) == {"image", "snapshot"} and all(t == home_tags for t in requested.values())
    assert (home_tags[tags.MANAGED], home_tags[tags.RUN], home_tags[tags.VERIFIED]) == ("true", run.id, "passed")
    assert guard.refused == []  # every attribute call found bakery:managed=true, the copy's included
    other = boto3.client("ec2", "eu-west-1")
    [snapshot] = amis.snapshot_ids(other.describe_images(ImageIds=[copy])["Images"][0])
    # not shared with aws.accounts: distribute shares the version once it passed verify --target aws
    assert other.describe_image_attribute(ImageId=copy, Attribute="launchPermission")["LaunchPermissions"] == []
    assert other.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")[
        "CreateVolumePermissions"] == []
    # one record, written once the copy was available, naming both regions; adoption in the copy's region passes
    record = verification_record.read_record(clients.client("ssm", "us-east-1"), "sample", result.version)
    assert record is not None and record["passed"] is True and record["amis"] == built
    assert record["snapshots"]["eu-west-1"] == [snapshot]
    catalog = open_catalog(tmp_path / "ci")
    assert adopt.adopt_version(catalog, other, "sample", result.version, "eu-west-1", "ci-run",
                               ssm=clients.client("ssm", "us-east-1"))["image_ref"] == copy
    [adopted] = catalog.verifications("sample", result.version)
    assert adopted["passed"] is True
    assert adopted["reports"]["record"] == f"/bakery/verifications/sample/{result.version}"


def test_a_failure_while_copying_removes_the_copies_the_home_ami_and_the_version(aws_project, aws, packer_offline,
                                                                                  monkeypatch):
    copying_project(aws_project, aws)
    guard, tag_on_create = ManagedOnly(), TagOnCreate()

    class CopyFails:
        """EC2 reports the copy failed on the first look at it (as it does for a copy it cannot finish)."""

        done = False

        def attach(self, made):
            if (made.meta.service_model.service_name, made.meta.region_name) == ("ec2", "eu-west-1"):
                made.meta.events.register("after-call.ec2.DescribeImages", self.failed)
            return made

        def failed(self, parsed, **_):
            if tag_on_create.requests and not self.done and len(parsed.get("Images", [])) == 1:
                self.done = True
                parsed["Images"][0].update(State="failed", StateReason={"Message": "injected: copy failed"})

    wrapped_clients(monkeypatch, guard, tag_on_create, CopyFails())
    builder = builder_for(aws_project)
    run = Run.start(builder.project.state_dir, "build")
    (run.path / "testinfra-build.xml").write_text(PASSING_REPORT)
    with pytest.raises(OperationError, match=r"copy ami-\w+ in eu-west-1 failed: injected: copy failed"):
        builder.build(builder.project.image("sample"), BuildOptions(), run)

    [(_, request)] = tag_on_create.requests
    assert all_amis("us-east-1") == [] and all_amis("eu-west-1") == []
    for region in ("us-east-1", "eu-west-1"):
        left = boto3.client("ec2", region).describe_snapshots(OwnerIds=["self"])["Snapshots"]
        assert [s["SnapshotId"] for s in left if tags.from_tag_list(s.get("Tags")).get(tags.RUN) == run.id] == []
    assert guard.refused == []  # the copy carried bakery:managed from its creation: removed without a claim
    assert any(call == "DeregisterImage" for call, _ in guard.allowed)
    assert builder.catalog.versions("sample", status=None) == []
    # no record: nothing to vouch for, and a record cannot be removed once written
    assert boto3.client("ssm", "us-east-1").get_parameters_by_path(Path="/bakery", Recursive=True)["Parameters"] == []


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


def test_undo_removes_only_what_this_run_registered(aws_project, monkeypatch):
    """Two catalogs can reserve the same version: a failed bake must not deregister the other bake's AMI."""
    bake_ = bake_for(aws_project, "20261129.004")
    bake_.variables(bake_.provenance())  # names this run's AMI, as before Packer starts
    ec2 = clients.client("ec2")
    same_version = {tags.MANAGED: "true", tags.IMAGE: "sample", tags.VERSION: "20261129.004"}
    mine_tagged = register_ami(ec2, "sample-20261129.004-copy", {**same_version, tags.RUN: bake_.run.id})
    theirs = register_ami(ec2, "sample-20261129.004-b0b0b0",
                          {**same_version, tags.RUN: "20261129T000000Z-build-b0b0b0"})
    # Packer registered it and died before its tag step: no tag at all, on the AMI or its snapshot
    mine_named = ec2.register_image(Name=bake_.ami_name, RootDeviceName="/dev/xvda", VirtualizationType="hvm",
                                    BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                          "Ebs": {"VolumeSize": 8}}])["ImageId"]
    [snapshot] = amis.snapshot_ids(ec2.describe_images(ImageIds=[mine_named])["Images"][0])
    # another bake's, untagged as well, of the same version: its name is not this run's
    theirs_untagged = ec2.register_image(Name="sample-20261129.004-c0c0c0", RootDeviceName="/dev/xvda")["ImageId"]
    guard = ManagedOnly()
    guarded_clients(monkeypatch, guard)
    bake_._undo()
    assert guard.refused == []  # claimed (tagged bakery:managed) before it was deregistered
    assert ("DeregisterImage", mine_named) in guard.allowed and ("DeleteSnapshot", snapshot) in guard.allowed
    assert sorted(i["ImageId"] for i in all_amis("us-east-1")) == sorted([theirs, theirs_untagged])
    assert amis.describe_ami(ec2, mine_tagged) is None and amis.describe_ami(ec2, mine_named) is None
    assert tags.from_tag_list(amis.describe_ami(ec2, theirs_untagged).get("Tags")) == {}  # not even claimed


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



def test_requirements_that_are_not_locked_stop_the_bake_before_any_aws_call(aws_project, monkeypatch):
    """Checked in plan(), so neither a reused cached AMI nor a reserved version gets past an unlocked install."""
    (aws_project / "requirements.yml").write_text("roles:\n  - author.web\n")
    builder = builder_for(aws_project)
    monkeypatch.setattr("bakery.builders.packer.clients.resolve_region", lambda _: pytest.fail("AWS was asked"))
    with pytest.raises(ConfigError, match="^requirements.yml is not locked; run: bake.py deps$"):
        builder.plan(builder.project.image("sample"), BuildOptions())
