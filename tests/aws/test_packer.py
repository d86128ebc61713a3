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

from bakery.aws import amis, clients, kms_keys, tags, verification_record
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
    assert passed["ami_regions"] == (["eu-west-1"] if shared else [])
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


def source_settings(template: Path) -> dict[str, str]:
    """The amazon-ebs source's own settings (name -> expression as written), nested blocks and comments left out."""
    lines = template.read_text().split('source "amazon-ebs" "image" {\n', 1)[1].splitlines()
    settings, depth = {}, 0
    for line in lines:
        code = line.split("#", 1)[0]
        if depth == 0 and (assignment := re.match(r"^\s*(\w+)\s*=\s*(.+?)\s*$", code)):
            settings[assignment[1]] = assignment[2]
        depth += code.count("{") - code.count("}")
        if depth < 0:  # the source's closing brace
            return settings
    raise AssertionError("the amazon-ebs source block never closes")


def test_template_leaves_description_and_sharing_to_bake_py():
    """Packer 1.6.6 modifies AMI attributes before it tags: under the shipped policy those calls are refused, so the
    template must give Packer nothing to modify (bake.py does it on the tagged AMI)."""
    settings = source_settings(REPO / "packer/aws.pkr.hcl")
    assert {"ami_name", "tags", "snapshot_tags", "run_tags", "ami_regions"} <= set(settings)  # the parse works
    modified_before_tags = {"ami_description", "ami_users", "ami_groups", "ami_product_codes", "snapshot_users",
                            "snapshot_groups", "ami_org_arns", "ami_ou_arns"}
    assert modified_before_tags.isdisjoint(settings), sorted(modified_before_tags & set(settings))
    assert settings["tags"] == settings["snapshot_tags"] == "var.tags"  # Packer's CreateTags: bakery:managed=true


MRK_ID = "mrk-1234abcd12ab34cd56ef1234567890ab"
EU_MRK_ARN = f"arn:aws:kms:eu-west-1:123456789012:key/{MRK_ID}"


@pytest.mark.parametrize(("aws_settings", "refusal"), [
    ({"regions": ["eu-west-1"], "kms_key_id": KMS_KEY, "region_kms_key_ids": {"eu-west-1": EU_MRK_ARN}},
     r"^bakery.yml: aws.region_kms_key_ids.eu-west-1 'arn:aws:kms:eu-west-1:123456789012:key/mrk-1234.*' is a "
     r"multi-Region key, .* \(alias/NAME or arn:aws:kms:eu-west-1:ACCOUNT:alias/NAME\)"),
    ({"regions": ["eu-west-1"], "kms_key_id": MRK_ID, "region_kms_key_ids": {"eu-west-1": "alias/bakery"}},
     r"^bakery.yml: aws.kms_key_id 'mrk-1234.*' is a multi-Region key, .*give an alias of it instead"),
    ({"regions": ["eu-west-1"], "region_kms_key_ids": {"us-east-1": MRK_ID, "eu-west-1": "alias/bakery"}},
     r"^bakery.yml: aws.region_kms_key_ids.us-east-1 'mrk-1234.*' is a multi-Region key"),
    ({"accounts": ["210987654321"]}, "aws.accounts needs aws.kms_key_id"),
    ({"accounts": ["210987654321"], "kms_key_id": KMS_KEY, "regions": ["eu-west-1", "us-west-2"],
      "region_kms_key_ids": {"eu-west-1": EU_KMS_KEY}},
     "aws.accounts needs a key for every region: .* has none for us-west-2"),
    ({"regions": ["eu-west-1", "us-west-2"], "region_kms_key_ids": {"us-west-2": EU_KMS_KEY}},
     "aws.region_kms_key_ids has no key for eu-west-1: Packer needs a key for every copied region"),
], ids=["copied-region-key-arn", "home-key-id-with-copies", "home-key-in-region-map", "shared-without-a-key",
        "shared-without-a-copied-regions-key", "some-copied-regions-without-a-key"])
def test_keys_that_cannot_work_are_refused_before_the_bake(project, aws_settings, refusal):
    settings = yaml.safe_load((project / "bakery.yml").read_text())
    settings["aws"] = {"region": "us-east-1", **aws_settings}
    (project / "bakery.yml").write_text(yaml.safe_dump(settings))
    builder = builder_for(project)  # refused before any AWS call
    with pytest.raises(ConfigError, match=refusal):
        builder.plan(builder.project.image("sample"), BuildOptions())


def test_multi_region_key_refusal_is_one_line_and_exit_2(aws_project):
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    settings["aws"].update(kms_key_id=KMS_KEY, region_kms_key_ids={"eu-west-1": f"{MRK_ID}"})
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    refused = bake(aws_project, "build", "sample", "--target", "aws")
    assert refused.rc == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "aws.region_kms_key_ids.eu-west-1 'mrk-1234" in refused.stderr and "alias/NAME" in refused.stderr


def test_packer_itself_refuses_what_bake_py_refuses_and_takes_the_alternatives(aws_project):
    """The check mirrors Debian's packer 1.6.6: `packer validate` of the shipped template, with exactly the builder's
    variables, refuses a multi-Region key id and key ARN for a copied region and takes aliases and plain keys; the
    home key alone (the launch volume's) is not Packer's to check, and bake.py lets it through."""
    settings = yaml.safe_load((aws_project / "bakery.yml").read_text())
    settings["aws"].update(kms_key_id=MRK_ID, region_kms_key_ids={"eu-west-1": EU_KMS_KEY})
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match="aws.kms_key_id 'mrk-"):
        bake_for(aws_project, "20261129.010")
    settings["aws"].update(regions=[], region_kms_key_ids={})  # no copies: the mrk key goes to the launch volume only
    (aws_project / "bakery.yml").write_text(yaml.safe_dump(settings))
    bake_ = bake_for(aws_project, "20261129.010")
    var_file = bake_.write_inputs(bake_.provenance())
    variables = json.loads(var_file.read_text())
    assert variables["kms_key_id"] == MRK_ID and not validate_errors(var_file)

    variables["ami_regions"] = ["eu-west-1"]
    verdicts = {}
    for key in (EU_MRK_ARN, MRK_ID, "alias/bakery-ami", "arn:aws:kms:eu-west-1:123456789012:alias/bakery-ami",
                EU_KMS_KEY):
        var_file.write_text(json.dumps({**variables, "kms_key_id": "alias/bakery-ami",
                                        "region_kms_key_ids": {"eu-west-1": key}}))
        verdicts[key] = validate_errors(var_file)
        assert kms_keys.packer_accepts(key) == (not verdicts[key])
    assert f'"{EU_MRK_ARN}" is not a valid KMS Key Id' in verdicts[EU_MRK_ARN]
    assert f'"{MRK_ID}" is not a valid KMS Key Id' in verdicts[MRK_ID]
    assert [k for k, errors in verdicts.items() if not errors] == [
        "alias/bakery-ami", "arn:aws:kms:eu-west-1:123456789012:alias/bakery-ami", EU_KMS_KEY]


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
    # Per-region keys take Packer's encrypting copy (moto keeps no KMS key to check): it copied, then removed its
    # intermediate AMI.
    assert "Copying/Encrypting AMI" in (run.path / "packer.log").read_text()
    assert [i["ImageId"] for i in all_amis("us-east-1")] == [result.ref]
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


def test_bake_py_describes_and_shares_the_amis_only_once_packer_tagged_them(aws_project, aws, packer_offline,
                                                                            monkeypatch):
    """Packer makes no attribute call (it would precede its tags); bake.py's own come after, on tagged resources."""
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
    commit = result.provenance["git_commit"][:12]
    assert sorted(descriptions) == sorted(f"{ami}: sample {result.version} from {commit} (bakery)"
                                          for ami in built.values())
    for region, ami in built.items():
        ec2 = boto3.client("ec2", region)
        permissions = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
        assert permissions == [{"UserId": "210987654321"}]
        [snapshot] = amis.snapshot_ids(ec2.describe_images(ImageIds=[ami])["Images"][0])
        volumes = ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
        assert volumes["CreateVolumePermissions"] == [{"UserId": "210987654321"}]
        assert ("ModifyImageAttribute", ami) in guard.allowed and ("ModifySnapshotAttribute", snapshot) in guard.allowed


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

