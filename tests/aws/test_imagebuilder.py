"""The EC2 Image Builder builder: S3 bundle, SSM base AMI and record, IAM profile through moto server; every Image
Builder call by Stubber.

Stubber checks each request against botocore's Image Builder model (names,
types, required members) and each canned response too, so the shapes here are
the real service's. Where the answer depends on the request the way the
service's does (ListComponents: byName aggregates every version of a name into
one entry), ServiceStubber answers from a function of the request instead of a
canned queue entry, still validated against the model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from botocore.awsrequest import AWSResponse
from botocore.stub import ANY, Stubber

from bakery.aws import clients
from bakery.aws import tags as tag_names
from bakery.aws.bundle import BUNDLE_ROOT, Bundle, build_bundle, upload_bundle
from bakery.aws.imagebuilder.resources import (
    ANSIBLE_CORE_VERSION,
    PYTEST_VERSION,
    TESTINFRA_VERSION,
    component_document,
    document_digest,
    ensure_component,
    ensure_recipe,
)
from bakery.aws.verification_record import read_record
from bakery.builders.base import BuildOptions
from bakery.builders.imagebuilder import ImageBuilderBuilder
from bakery.catalog import open_catalog
from bakery.config import Project
from bakery.errors import ConfigError, OperationError
from bakery.layers import input_digest, plan_layers
from bakery.progress import Progress
from bakery.runs import Run
from tests.conftest import REPO, bake

pytestmark = pytest.mark.aws

ACCOUNT = "123456789012"
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
BUCKET = "bakery-bundles-test"
PARAMETER = "/test/debian-12/amd64"
ARN = f"arn:aws:imagebuilder:us-east-1:{ACCOUNT}"
AWS_SETTINGS = {
    "region": "us-east-1", "regions": ["eu-west-1"], "accounts": ["111122223333"], "base_ami_parameter": PARAMETER,
    "artifacts_bucket": BUCKET, "instance_profile": "bakery-build", "subnet_id": "subnet-0abc",
    "security_group_ids": ["sg-0abc"],
    "kms_key_id": "alias/bakery-us", "region_kms_key_ids": {"eu-west-1": "alias/bakery-eu"},
}
KEYS = {"us-east-1": "alias/bakery-us", "eu-west-1": "alias/bakery-eu"}  # each copy is encrypted with its region's key
EXTRA = {"bakery_image": "sample", "bakery_target": "aws"}


class Captured:
    """A Stubber expectation that accepts any value and keeps it, for assertions about its content."""

    value = None

    def __eq__(self, other):
        self.value = other
        return True

    def __ne__(self, other):
        return not self.__eq__(other)


@pytest.fixture
def ibproj(proj: Path) -> Path:
    """The fixture project with aws settings, a role dependency, group_vars and an image suite for `sample`."""
    settings = yaml.safe_load((proj / "bakery.yml").read_text()) or {}
    settings["aws"] = AWS_SETTINGS
    (proj / "bakery.yml").write_text(yaml.safe_dump(settings))
    (proj / "roles" / "dep" / "tasks").mkdir(parents=True)
    (proj / "roles" / "dep" / "tasks" / "main.yml").write_text("---\n- name: Nothing\n  ansible.builtin.meta: noop\n")
    (proj / "roles" / "second" / "meta").mkdir()
    (proj / "roles" / "second" / "meta" / "main.yml").write_text("---\ndependencies:\n  - dep\n")
    (proj / "roles" / "first" / "molecule" / "default").mkdir(parents=True)
    (proj / "roles" / "first" / "molecule" / "default" / "molecule.yml").write_text("---\n")
    (proj / "playbooks" / "group_vars" / "all").mkdir(parents=True)
    (proj / "playbooks" / "group_vars" / "all" / "bake.yml").write_text("---\nsample_greeting: hello\n")
    (proj / "tests" / "images").mkdir(parents=True)
    (proj / "tests" / "images" / "test_sample.py").write_text(
        "def test_release(host):\n    assert host.file('/etc/image-release').exists\n")
    return proj


@pytest.fixture
def base_ami(aws, monkeypatch) -> str:
    """A base AMI in moto and the SSM parameter naming it."""
    # moto (same process) skips loading its ~1 s catalogue of public AMIs
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    ec2 = clients.client("ec2")
    ami = ec2.register_image(Name="debian-12-test", RootDeviceName="/dev/xvda", Architecture="x86_64",
                             VirtualizationType="hvm",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])["ImageId"]
    clients.client("ssm").put_parameter(Name=PARAMETER, Value=ami, Type="String")
    clients.client("s3").create_bucket(Bucket=BUCKET)
    return ami


def make_profile(name: str = "bakery-build", *, role: str | None = "bakery-build-role",
                 policies: tuple[str, ...] = (SSM_CORE,)) -> None:
    """An instance profile in moto's IAM, with a role that has `policies` attached (or no role)."""
    iam = clients.client("iam")
    iam.create_instance_profile(InstanceProfileName=name)
    if role is None:
        return
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    for arn in policies:
        iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role)


@pytest.fixture
def profiles(aws, monkeypatch):
    """make_profile, in a moto IAM that knows AWS's managed policies (moto loads them only when asked to).

    moto server runs in this process: its IAM backend alone is re-made with
    them, which leaves the rest of the test's moto state alone.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    iam_backends[DEFAULT_ACCOUNT_ID]["aws"].reset()
    return make_profile


@pytest.fixture
def build_profile(profiles) -> str:
    """The build instance profile the settings name, with AmazonSSMManagedInstanceCore as Image Builder needs."""
    profiles()
    return "bakery-build"


@pytest.fixture
def ib(aws, monkeypatch):
    """bakery's own imagebuilder client (retries, AccessDenied hook) under a Stubber; other services stay moto's."""
    stubbed = clients.client("imagebuilder", "us-east-1")
    real = clients.client
    monkeypatch.setattr(
        "bakery.builders.imagebuilder.client",
        lambda service, region=None, profile=None: (stubbed if service == "imagebuilder"
                                                    else real(service, region, profile)))
    with Stubber(stubbed) as stub:
        yield stub
        stub.assert_no_pending_responses()


class ServiceStubber(Stubber):
    """A Stubber that answers the operations in `answers` from a function of each request, as the service would.

    The request is still validated by botocore against the model, and each
    answer against the output shape, like any Stubber response; every other
    operation comes from the queue in order. `requests` keeps what was asked.
    """

    def __init__(self, client, answers):
        super().__init__(client)
        self.answers = answers
        self.requests: list[tuple[str, dict]] = []
        self._answer = None

    def _assert_expected_params(self, model, params, context, **kwargs):
        if model.name not in self.answers:
            return super()._assert_expected_params(model, params, context, **kwargs)
        self.requests.append((model.name, dict(params)))
        response = self.answers[model.name](dict(params))
        self._validate_operation_response(model.name, response)
        self._answer = (AWSResponse(None, 200, {}, None), response)
        return None

    def _get_response_handler(self, model, params, context, **kwargs):
        if model.name not in self.answers:
            return super()._get_response_handler(model, params, context, **kwargs)
        answer, self._answer = self._answer, None
        return answer


def list_components_like_aws(versions: list[dict], page_size: int = 25):
    """ListComponents over `versions` as the API reference describes it (botocore 1.44's model docs).

    byName=True: "one entry per component name, with all versions of each
    component aggregated" (which version's fields the entry shows is not
    documented; here the newest's), and it cannot be combined with the version
    filter. byName=False (the default): one entry per version. DEPRECATED
    versions only with the status filter. Pages of at most 25 ("If you don't
    specify a value, Image Builder returns up to 25 items").
    """

    def answer(request: dict) -> dict:
        filters = {f["name"]: f["values"] for f in request.get("filters", [])}
        assert set(filters) <= {"description", "name", "platform", "productCodes", "status", "supportedOsVersion",
                                "type", "version"}, filters
        assert not (request.get("byName") and "version" in filters), "byName cannot be combined with version"
        statuses = filters.get("status") or ["ACTIVE", "DISABLED"]
        found = [v for v in versions if v["name"] in filters.get("name", [v["name"]]) and v["status"] in statuses]
        if request.get("byName"):
            newest: dict[str, dict] = {}
            for version in found:
                key = tuple(int(n) for n in version["version"].split("."))
                if version["name"] not in newest or key > newest[version["name"]][0]:
                    newest[version["name"]] = (key, version)
            found = [entry for _, entry in newest.values()]
        start = int(request.get("nextToken") or 0)
        size = min(request.get("maxResults") or page_size, page_size)
        page = {"componentVersionList": found[start:start + size]}
        if start + size < len(found):
            page["nextToken"] = str(start + size)
        return page

    return answer


def component_version(number: str, digest: str, status: str = "ACTIVE") -> dict:
    return {"arn": f"{ARN}:component/bakery-sample/{number}", "name": "bakery-sample", "version": number,
            "platform": "Linux", "type": "BUILD", "owner": ACCOUNT, "status": status,
            "description": f"bakery image sample: Ansible bake, validate, testinfra; document {digest}"}


def make_builder(root: Path, **kwargs):
    project = Project(root)
    catalog = open_catalog(project.state_dir)
    stream = io.StringIO()
    builder = ImageBuilderBuilder(project, catalog, Progress(stream), poll_first=0.001, poll_max=0.002,
                                  sleep=lambda _: None, **kwargs)
    return builder, project, catalog, stream


def expected_bundle(project: Project):
    return build_bundle(project, project.image("sample"), dict(EXTRA), {})


def image(status: str, **extra) -> dict:
    return {"image": {"arn": f"{ARN}:image/bakery-sample/2026.1.0/1", "name": "bakery-sample",
                      "state": {"status": status}, "imageRecipe": {"name": "bakery-sample"},
                      "imageTestsConfiguration": {"imageTestsEnabled": True, "timeoutMinutes": 60},
                      "infrastructureConfiguration": {
                          "logging": {"s3Logs": {"s3BucketName": BUCKET, "s3KeyPrefix": "imagebuilder-logs/sample"}}},
                      **extra}}


def stub_resources(stub, ami: str, *, existing: bool, document: Captured, parameters: Captured, ami_tags: Captured,
                   recipe_version: str, component_digest: str = "") -> None:
    """The calls before create_image, for a project with no Image Builder resources yet, or with them all in place."""
    name = "bakery-sample"
    by_name = [{"name": "name", "values": [name]}]
    component_arn = f"{ARN}:component/bakery-sample/1.0.0/1"
    listed = [{"arn": f"{ARN}:component/bakery-sample/1.0.0", "name": name, "version": "1.0.0", "status": "ACTIVE",
               "description": f"bakery image sample; document {component_digest}"}] if existing else []
    # every version, one entry each (byName false), then the deprecated ones the default listing leaves out
    stub.add_response("list_components", {"componentVersionList": listed},
                      {"owner": "Self", "filters": by_name, "byName": False})
    stub.add_response("list_components", {"componentVersionList": []},
                      {"owner": "Self", "filters": [*by_name, {"name": "status", "values": ["DEPRECATED"]}],
                       "byName": False})
    if not existing:
        stub.add_response("create_component", {"componentBuildVersionArn": component_arn}, {
            "name": name, "semanticVersion": "1.0.0", "platform": "Linux", "data": document, "description": ANY,
            "changeDescription": ANY, "tags": {"bakery:managed": "true", "bakery:image": "sample"}, "clientToken": ANY})
    recipes = ([{"arn": f"{ARN}:image-recipe/bakery-sample/{recipe_version.rsplit('.', 1)[0]}.0", "name": name}]
               if existing else [])
    stub.add_response("list_image_recipes", {"imageRecipeSummaryList": recipes}, {"owner": "Self", "filters": by_name})
    stub.add_response("create_image_recipe", {"imageRecipeArn": f"{ARN}:image-recipe/bakery-sample/{recipe_version}"}, {
        "name": name, "semanticVersion": recipe_version, "description": ANY, "parentImage": ami,
        "components": [{"componentArn": listed[0]["arn"] if existing else component_arn, "parameters": parameters}],
        "blockDeviceMappings": [{"deviceName": root_device(ami), "ebs": {
            "encrypted": True, "deleteOnTermination": True, "volumeSize": 8, "volumeType": "gp3",
            "kmsKeyId": KEYS["us-east-1"]}}],
        "additionalInstanceConfiguration": {"systemsManagerAgent": {"uninstallAfterBuild": True}},
        "tags": {"bakery:managed": "true", "bakery:image": "sample"}, "clientToken": ANY})
    infrastructure = {
        "description": ANY, "instanceTypes": ["t3.small"], "instanceProfileName": "bakery-build",
        "subnetId": "subnet-0abc", "securityGroupIds": ["sg-0abc"], "terminateInstanceOnFailure": True,
        "instanceMetadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2},
        "logging": {"s3Logs": {"s3BucketName": BUCKET, "s3KeyPrefix": "imagebuilder-logs/sample"}},
        "resourceTags": {"bakery:managed": "true", "bakery:image": "sample"}, "clientToken": ANY}
    infra_arn = f"{ARN}:infrastructure-configuration/bakery-sample"
    # no launchPermission for aws.accounts: distribute shares the version once it passed verify --target aws
    distribution = {"description": ANY, "distributions": [
        {"region": region, "amiDistributionConfiguration": {
            "name": ANY, "description": ANY, "amiTags": ami_tags, "kmsKeyId": KEYS[region]}}
        for region in ("us-east-1", "eu-west-1")], "clientToken": ANY}
    dist_arn = f"{ARN}:distribution-configuration/bakery-sample"
    for kind, spec, arn in (("infrastructure", infrastructure, infra_arn), ("distribution", distribution, dist_arn)):
        summaries = [{"arn": arn, "name": name}] if existing else []
        stub.add_response(f"list_{kind}_configurations", {f"{kind}ConfigurationSummaryList": summaries},
                          {"filters": by_name})
        if existing:
            stub.add_response(f"update_{kind}_configuration", {f"{kind}ConfigurationArn": arn},
                              {f"{kind}ConfigurationArn": arn, **spec})
        else:
            stub.add_response(f"create_{kind}_configuration", {f"{kind}ConfigurationArn": arn},
                              {"name": name, **spec, "tags": {"bakery:managed": "true", "bakery:image": "sample"}})
    stub.add_response("create_image", {"imageBuildVersionArn": f"{ARN}:image/bakery-sample/2026.1.0/1"}, {
        "imageRecipeArn": f"{ARN}:image-recipe/bakery-sample/{recipe_version}",
        "infrastructureConfigurationArn": infra_arn, "distributionConfigurationArn": dist_arn,
        "imageTestsConfiguration": {"imageTestsEnabled": True, "timeoutMinutes": 60},
        "enhancedImageMetadataEnabled": True, "tags": ANY, "clientToken": ANY})


def made_ami(region: str) -> str:
    """An AMI with a snapshot in `region`, as Image Builder leaves one (its own tags only on the AMI)."""
    ec2 = clients.client("ec2", region)
    volume = ec2.create_volume(Size=8, AvailabilityZone=f"{region}a")
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
    return ec2.register_image(
        Name=f"bakery-sample-{region}", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}])["ImageId"]


def root_device(ami: str) -> str:
    """What the base AMI says its root device is: the recipe's encrypted volume must replace exactly that one."""
    return clients.client("ec2").describe_images(ImageIds=[ami])["Images"][0]["RootDeviceName"]


def today_recipe(patch: int) -> str:
    return f"{datetime.now(UTC):%Y%m%d}.1.{patch}"


def test_build_creates_every_resource_polls_to_available_and_records_the_version(ibproj, base_ami, build_profile,
                                                                                  ib):
    builder, project, catalog, stream = make_builder(ibproj)
    document, parameters, ami_tags = Captured(), Captured(), Captured()
    stub_resources(ib, base_ami, existing=False, document=document, parameters=parameters, ami_tags=ami_tags,
                   recipe_version=today_recipe(0))
    arn = {"imageBuildVersionArn": f"{ARN}:image/bakery-sample/2026.1.0/1"}
    for status in ("PENDING", "CREATING", "BUILDING", "BUILDING", "TESTING", "DISTRIBUTING", "INTEGRATING"):
        ib.add_response("get_image", image(status), arn)
    made = {region: made_ami(region) for region in ("us-east-1", "eu-west-1")}  # what Image Builder registered, in moto
    ib.add_response("get_image", image("AVAILABLE", outputResources={"amis": [
        {"region": region, "image": ami} for region, ami in made.items()]}), arn)

    run = Run.start(project.state_dir, "build")
    result = builder.build(project.image("sample"), BuildOptions(), run)

    home = made["us-east-1"]
    assert (result.ref, result.image_id, result.reused) == (home, home, False)
    record = catalog.version("sample", result.version)
    assert record["status"] == "ready" and record["image_ref"] == home
    # the test phase's pass and the run id, on every AMI and snapshot (a fresh checkout adopts them)
    for region, ami in made.items():
        ec2 = clients.client("ec2", region)
        image_data = ec2.describe_images(ImageIds=[ami])["Images"][0]
        snapshots = [m["Ebs"]["SnapshotId"] for m in image_data["BlockDeviceMappings"]]
        assert snapshots
        for resource in [image_data, *ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]]:
            found = tag_names.from_tag_list(resource["Tags"])
            assert ((found[tag_names.VERIFIED], found[tag_names.RUN], found[tag_names.VERSION])
                    == ("passed", run.id, result.version))
            assert found[tag_names.VERIFICATION] == "EC2 Image Builder test phase passed tests/images/test_sample.py"
    assert record["provenance"]["base_image"] == base_ami
    assert [layer["role"] for layer in record["layers"]] == ["first", "second"]
    [verification] = catalog.verifications("sample", result.version)
    assert verification["passed"] and "test phase passed" in verification["summary"]
    # the write-once SSM record in the home region: every AMI, the snapshots behind each, the report's digest
    ssm_record = read_record(clients.client("ssm"), "sample", result.version)
    assert ssm_record is not None and ssm_record["passed"] is True and ssm_record["run_id"] == run.id
    assert ssm_record["amis"] == made
    assert ssm_record["snapshots"] == {
        region: [m["Ebs"]["SnapshotId"] for m in clients.client("ec2", region).describe_images(
            ImageIds=[ami])["Images"][0]["BlockDeviceMappings"]] for region, ami in made.items()}
    report = {k: v for k, v in verification["reports"].items() if k not in ("report_sha256", "record")}
    assert report["state"] == "AVAILABLE" and report["tests"] == {"imageTestsEnabled": True, "timeoutMinutes": 60}
    canonical = json.dumps(report, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(canonical).hexdigest()
    assert ssm_record["report_sha256"] == verification["reports"]["report_sha256"] == digest
    assert ssm_record["summary"] == verification["summary"]
    # the bundle is in S3 under its content hash, and the component downloads exactly that object
    bundle = expected_bundle(project)
    body = clients.client("s3").get_object(Bucket=BUCKET, Key=f"bundles/sample/{bundle.sha256}.tar.gz")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == bundle.sha256
    doc = yaml.safe_load(document.value)
    build, validate, test = doc["phases"]
    assert (build["name"], validate["name"], test["name"]) == ("build", "validate", "test")
    assert build["steps"][0]["inputs"][0]["source"] == f"s3://{BUCKET}/bundles/sample/{bundle.sha256}.tar.gz"
    assert bundle.sha256 in document.value and "ansible-playbook -c local" in document.value
    params = {p["name"]: p["value"][0] for p in parameters.value}
    assert params["ImageVersion"] == result.version and params["GitCommit"] == record["provenance"]["git_commit"]
    assert f'IMAGE_VERSION="{result.version}"' in base64.b64decode(params["ImageRelease"]).decode()
    assert (ami_tags.value[tag_names.INPUT_DIGEST] == result.input_digest
            and ami_tags.value[tag_names.VERSION] == result.version)
    lines = stream.getvalue().splitlines()
    states = [line.split("Image Builder ")[1].split(" (")[0] for line in lines if ": Image Builder " in line]
    assert states == ["PENDING", "CREATING", "BUILDING", "TESTING", "DISTRIBUTING", "INTEGRATING", "AVAILABLE"]
    assert f"verification recorded in SSM /bakery/verifications/sample/{result.version}" in stream.getvalue()


@pytest.fixture
def components(aws):
    """The home region's imagebuilder client, its ListComponents answered like the service over `versions`."""
    versions: list[dict] = []
    ib = clients.client("imagebuilder", "us-east-1")
    with ServiceStubber(ib, {"ListComponents": list_components_like_aws(versions)}) as stub:
        yield ib, stub, versions
        stub.assert_no_pending_responses()


def test_a_component_is_reused_when_any_of_its_versions_has_the_document(components):
    """Not only the newest: byName=True would show one aggregated entry and miss 1.0.0 (then create a copy of it)."""
    ib, stub, versions = components
    document = component_document("sample", f"s3://{BUCKET}/bundles/sample/{'ab' * 32}.tar.gz", "ab" * 32)
    versions += [component_version("1.0.0", document_digest(document)),
                 component_version("1.0.1", "sha256:" + "1" * 64), component_version("1.0.2", "sha256:" + "2" * 64)]

    assert ensure_component(ib, "sample", document, "token") == (f"{ARN}:component/bakery-sample/1.0.0", False)
    assert all(request["byName"] is False and {"name": "name", "values": ["bakery-sample"]} in request["filters"]
               for _, request in stub.requests)


def test_a_new_component_version_is_one_above_every_version_on_every_page_deprecated_too(components):
    """30 versions (two pages) and a deprecated 1.0.30 the default listing leaves out: the next one is 1.0.31."""
    ib, stub, versions = components
    versions += [component_version(f"1.0.{n}", f"sha256:{n:064d}") for n in range(30)]
    versions.append(component_version("1.0.30", "sha256:" + "f" * 64, status="DEPRECATED"))
    document = component_document("sample", f"s3://{BUCKET}/bundles/sample/{'cd' * 32}.tar.gz", "cd" * 32)
    made = f"{ARN}:component/bakery-sample/1.0.31/1"
    stub.add_response("create_component", {"componentBuildVersionArn": made}, {
        "name": "bakery-sample", "semanticVersion": "1.0.31", "platform": "Linux", "data": document,
        "description": ANY, "changeDescription": ANY, "tags": ANY, "clientToken": "token"})

    assert ensure_component(ib, "sample", document, "token") == (made, True)
    assert len(stub.requests) == 3  # two pages of the default listing, one of the deprecated versions


def test_recipe_versions_come_from_every_page_of_the_listing(aws):
    """ListImageRecipes has no byName (one summary per version, its ARN ending in it): every page counts."""
    ib = clients.client("imagebuilder", "us-east-1")
    by_name = [{"name": "name", "values": ["bakery-sample"]}]
    summaries = [{"arn": f"{ARN}:image-recipe/bakery-sample/20260101.1.{n}", "name": "bakery-sample"}
                 for n in range(3)]
    with Stubber(ib) as stub:
        stub.add_response("list_image_recipes", {"imageRecipeSummaryList": summaries[:2], "nextToken": "2"},
                          {"owner": "Self", "filters": by_name})
        stub.add_response("list_image_recipes", {"imageRecipeSummaryList": summaries[2:]},
                          {"owner": "Self", "filters": by_name, "nextToken": "2"})
        stub.add_response("create_image_recipe", {"imageRecipeArn": f"{ARN}:image-recipe/bakery-sample/20260101.1.3"},
                          {"name": "bakery-sample", "semanticVersion": "20260101.1.3", "description": ANY,
                           "components": ANY, "parentImage": "ami-0abc", "blockDeviceMappings": ANY,
                           "additionalInstanceConfiguration": ANY, "tags": ANY, "clientToken": "token"})
        ensure_recipe(ib, "sample", "20260101.001", component_arn=f"{ARN}:component/bakery-sample/1.0.0",
                      parameters=[{"name": "ImageVersion", "value": ["20260101.001"]}], parent_ami="ami-0abc",
                      root_device="/dev/xvda", volume_size=8, kms_key_id="", token="token")
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(("profile", "expected"), [
    ({"name": "other-profile"}, "no such instance profile in this account"),
    ({"role": None}, "has no role"),
    ({"policies": ()}, "its role bakery-build-role does not have the AWS managed policy AmazonSSMManagedInstanceCore"),
    ({"policies": ("arn:aws:iam::aws:policy/EC2InstanceProfileForImageBuilder",)},
     "does not have the AWS managed policy AmazonSSMManagedInstanceCore attached"),
])
def test_an_instance_profile_image_builder_cannot_use_stops_the_build_before_anything_is_made(
        ibproj, base_ami, ib, profiles, profile, expected):
    """One line naming aws.instance_profile and what the role needs; no upload, no Image Builder call (none stubbed)."""
    profiles(**profile)
    builder, project, catalog, _ = make_builder(ibproj)
    with pytest.raises(ConfigError) as caught:
        builder.build(project.image("sample"), BuildOptions(), Run.start(project.state_dir, "build"))
    message = str(caught.value)
    assert "aws.instance_profile 'bakery-build'" in message and expected in message and "\n" not in message
    assert f"s3:PutObject on s3://{BUCKET}/imagebuilder-logs/*" in message
    assert f"s3:GetObject on s3://{BUCKET}/bundles/*" in message
    assert clients.client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    assert catalog.versions("sample", status=None) == []


def test_bake_py_exits_2_when_the_instance_profile_is_missing(ibproj, base_ami):
    outcome = bake(ibproj, "build", "sample", "--target", "aws", "--builder", "imagebuilder", timeout=120)
    assert outcome.rc == 2, outcome.stderr
    assert "aws.instance_profile 'bakery-build': no such instance profile" in outcome.stderr
    assert "Traceback" not in outcome.stderr


def test_failed_build_names_the_phase_and_logs_and_discards_the_version(ibproj, base_ami, build_profile, ib):
    builder, project, catalog, _ = make_builder(ibproj)
    bundle = expected_bundle(project)
    digest = document_digest(component_document("sample", bundle.uri(BUCKET), bundle.sha256))
    stub_resources(ib, base_ami, existing=True, document=Captured(), parameters=Captured(), ami_tags=Captured(),
                   recipe_version=today_recipe(1), component_digest=digest)
    arn = {"imageBuildVersionArn": f"{ARN}:image/bakery-sample/2026.1.0/1"}
    ib.add_response("get_image", image("BUILDING"), arn)
    ib.add_response("get_image", image("FAILED", state={
        "status": "FAILED", "reason": "Workflow failed", "failureContext": {"componentFailure": {
            "phaseName": "build", "stepName": "RunPlaybook", "errorMessage": "ansible-playbook exited 2"}}}), arn)

    with pytest.raises(OperationError) as failed:
        builder.build(project.image("sample"), BuildOptions(), Run.start(project.state_dir, "build"))

    message = str(failed.value)
    assert "phase 'build', step 'RunPlaybook'" in message and "ansible-playbook exited 2" in message
    assert f"s3://{BUCKET}/imagebuilder-logs/sample/" in message and "/aws/imagebuilder/bakery-sample" in message
    assert catalog.versions("sample", status=None) == []  # the reservation is gone; no cancel call was stubbed or made


def test_a_build_that_outlives_its_timeout_is_cancelled_and_discarded(ibproj, base_ami, build_profile, ib):
    builder, project, catalog, stream = make_builder(ibproj, timeout=0)
    stub_resources(ib, base_ami, existing=False, document=Captured(), parameters=Captured(), ami_tags=Captured(),
                   recipe_version=today_recipe(0))
    arn = {"imageBuildVersionArn": f"{ARN}:image/bakery-sample/2026.1.0/1"}
    ib.add_response("get_image", image("BUILDING"), arn)
    ib.add_response("cancel_image_creation", arn, {**arn, "clientToken": ANY})

    with pytest.raises(OperationError, match="still BUILDING"):
        builder.build(project.image("sample"), BuildOptions(), Run.start(project.state_dir, "build"))

    assert catalog.versions("sample", status=None) == []
    assert "cancelled Image Builder build" in stream.getvalue()


def test_unchanged_inputs_reuse_the_tagged_ami_without_any_image_builder_call(ibproj, base_ami, ib):
    builder, project, _, stream = make_builder(ibproj)
    definition = project.image("sample")
    digest = input_digest(plan_layers(definition, base_ami, dict(EXTRA), {}), base_ami)
    ec2 = clients.client("ec2")
    ami = ec2.register_image(Name="bakery-sample-20260101.001", RootDeviceName="/dev/xvda", Architecture="x86_64",
                             VirtualizationType="hvm",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=tag_names.as_tag_list({
        tag_names.MANAGED: "true", tag_names.IMAGE: "sample", tag_names.VERSION: "20260101.001",
        tag_names.INPUT_DIGEST: digest}))

    result = builder.build(definition, BuildOptions(), Run.start(project.state_dir, "build"))

    assert (result.reused, result.ref, result.version, result.input_digest) == (True, ami, "20260101.001", digest)
    assert "KeyCount" in (listing := clients.client("s3").list_objects_v2(Bucket=BUCKET)) and listing["KeyCount"] == 0
    assert "reusing" in stream.getvalue()
    adopted = builder.catalog.version("sample", "20260101.001")  # baked elsewhere: now deployable from this checkout
    assert adopted is not None and (adopted["status"], adopted["image_id"]) == ("ready", ami)


def test_bundle_is_deterministic_holds_what_the_bake_reads_and_uploads_once(ibproj, base_ami, tmp_path):
    project = Project(ibproj)
    artifact = tmp_path / "0123abcd.tar.gz"
    artifact.write_bytes(b"app")
    role_vars = {"second": {"second_artifact_path": str(artifact), "second_artifact_sha256": "0123abcd"}}
    first = build_bundle(project, project.image("sample"), dict(EXTRA), role_vars)
    again = build_bundle(project, project.image("sample"), dict(EXTRA), role_vars)
    assert first.sha256 == again.sha256 and first.data == again.data
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        names = set(tar.getnames())
        extra_vars = yaml.safe_load(tar.extractfile("bakery/extra-vars.json"))
        inventory = yaml.safe_load(tar.extractfile("bakery/inventory.yml"))
    assert {"playbooks/sample.yml", "playbooks/group_vars/all/bake.yml", "roles/first/tasks/main.yml",
            "roles/second/meta/main.yml", "roles/dep/tasks/main.yml", "tests/images/test_sample.py",
            "artifacts/second/0123abcd.tar.gz"} <= names
    assert not any(n.startswith(("roles/boom", "roles/planted", "playbooks/failing", "roles/first/molecule"))
                   for n in names)
    assert extra_vars["second_artifact_path"] == f"{BUNDLE_ROOT}/artifacts/second/0123abcd.tar.gz"
    assert set(inventory["all"]["children"]) == {"bakery_build", "sample"}
    s3 = clients.client("s3")
    assert upload_bundle(s3, BUCKET, first) is True
    assert upload_bundle(s3, BUCKET, again) is False
    assert ([o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
            == [f"bundles/sample/{first.sha256}.tar.gz"])


def test_upload_counts_a_forbidden_head_as_absent(aws):
    """Without s3:ListBucket S3 answers HEAD of a missing key with 403: the bundle is put all the same.

    Its key names its content.
    """
    from botocore.awsrequest import AWSResponse
    from urllib3 import HTTPResponse

    s3 = clients.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    heads: list[str] = []

    def forbidden(request, **_):  # what S3 sends a caller without s3:ListBucket: 403, no body (a HEAD has none)
        heads.append(request.url)
        return AWSResponse(request.url, 403, {}, HTTPResponse(body=io.BytesIO(b""), status=403, preload_content=False))

    s3.meta.events.register("before-send.s3.HeadObject", forbidden)
    data = b"bundle"
    bundle = Bundle(image="sample", data=data, sha256=hashlib.sha256(data).hexdigest(), files=[])
    assert upload_bundle(s3, BUCKET, bundle) is True
    # there already, still forbidden to see: the same bytes again, harmlessly
    assert upload_bundle(s3, BUCKET, bundle) is True
    assert len(heads) == 2 and s3.get_object(Bucket=BUCKET, Key=bundle.key)["Body"].read() == data


def test_component_template_is_valid_yaml_with_pinned_tools_that_match_requirements():
    sha = "ab" * 32
    document = yaml.safe_load(component_document("sample", f"s3://b/bundles/sample/{sha}.tar.gz", sha))
    assert document["schemaVersion"] == 1.0
    assert {list(p)[0] for p in document["parameters"]} == {"ImageVersion", "GitCommit", "ImageRelease"}
    commands = {step["name"]: " ".join(step["inputs"]["commands"])
                for phase in document["phases"] for step in phase["steps"] if step["action"] == "ExecuteBash"}
    assert "rm -rf /var/tmp/bakery-build" in commands["RemoveBuildTools"]
    assert "is-system-running" in commands["SystemRunning"]
    assert "--hosts=local://" in commands["Testinfra"] and "tests/images/test_sample.py" in commands["Testinfra"]
    pins = dict(line.strip().split("==")
                for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line)
    assert ((pins["ansible-core"], pins["pytest"], pins["pytest-testinfra"])
            == (ANSIBLE_CORE_VERSION, PYTEST_VERSION, TESTINFRA_VERSION))
    for name, script in commands.items():  # every script parses as bash (parameters filled in as the recipe does)
        script = (script.replace("{{ ImageRelease }}", "SU1BR0U=").replace("{{ ImageVersion }}", "20260101.001")
                  .replace("{{ GitCommit }}", "abc1234"))
        checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"
    with pytest.raises(ConfigError):
        component_document("sample", "s3://b/x'; rm -rf /", sha)


@pytest.mark.parametrize(("field", "value"), [("artifacts_bucket", ""), ("instance_profile", "")])
def test_missing_bucket_or_instance_profile_is_one_config_line(ibproj, aws, field, value):
    settings = yaml.safe_load((ibproj / "bakery.yml").read_text())
    settings["aws"][field] = value
    (ibproj / "bakery.yml").write_text(yaml.safe_dump(settings))
    builder, project, _, _ = make_builder(ibproj)
    with pytest.raises(ConfigError, match=f"aws.{field} is empty") as caught:
        builder.build(project.image("sample"), BuildOptions(), Run.start(project.state_dir, "build"))
    assert "\n" not in str(caught.value)


def test_bake_py_exits_2_when_the_bucket_is_not_set(ibproj, aws):
    settings = yaml.safe_load((ibproj / "bakery.yml").read_text())
    settings["aws"]["artifacts_bucket"] = ""
    (ibproj / "bakery.yml").write_text(yaml.safe_dump(settings))
    outcome = bake(ibproj, "build", "sample", "--target", "aws", "--builder", "imagebuilder", timeout=60)
    assert outcome.rc == 2, outcome.stderr
    assert "aws.artifacts_bucket" in outcome.stderr and "Traceback" not in outcome.stderr


def test_the_instance_role_policy_grants_the_bundle_read_and_the_log_write_and_nothing_else():
    """docs/aws-imagebuilder-instance-role.json, for the prefixes the code uses, by the IAM evaluator."""
    from bakery.aws.bundle import KEY_PREFIX
    from bakery.aws.iam_policy import render_instance_role_policy
    from bakery.aws.imagebuilder.instance_profile import ROLE_POLICY_DOC
    from bakery.aws.imagebuilder.resources import LOG_PREFIX
    from bakery.aws.settings import AwsSettings
    from tests.iam_evaluator import evaluate

    # ROLE_POLICY_DOC is this rendering for docs/aws-iam-policy.example.yml (tests/aws/test_policy_replay.py)
    policy = render_instance_role_policy(AwsSettings(artifacts_bucket=BUCKET))
    bundle = f"arn:aws:s3:::{BUCKET}/{KEY_PREFIX}/sample/{'ab' * 32}.tar.gz"
    log = f"arn:aws:s3:::{BUCKET}/{LOG_PREFIX}/sample/bakery-sample/2026.1.0/1/TOE_2026-01-01/console.log"
    allowed = [("s3:GetObject", bundle), ("s3:PutObject", log)]
    denied = [("s3:PutObject", bundle),  # a build instance must not replace a bundle another build reads
              ("s3:GetObject", log), ("s3:GetObject", f"arn:aws:s3:::other-bucket/{KEY_PREFIX}/sample/x.tar.gz"),
              ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/elsewhere/x"), ("s3:DeleteObject", log),
              ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}")]
    assert [evaluate([policy], action, resource, {}) for action, resource in allowed] == ["allow"] * len(allowed)
    assert [evaluate([policy], action, resource, {}) for action, resource in denied] == (
        ["implicit_deny"] * len(denied))
    docs = (REPO / "docs" / "aws.md").read_text()
    assert ROLE_POLICY_DOC.removeprefix("docs/") in docs and "AmazonSSMManagedInstanceCore" in docs
    assert all(f"s3://<aws.artifacts_bucket>/{prefix}/*" in docs for prefix in (LOG_PREFIX, KEY_PREFIX))


def test_requirements_that_are_not_locked_stop_the_build_before_any_aws_call(ibproj, monkeypatch):
    (ibproj / "requirements.yml").write_text("roles:\n  - author.web\n")
    builder, project, _, _ = make_builder(ibproj)
    monkeypatch.setattr("bakery.builders.imagebuilder.resolve_region", lambda _: pytest.fail("AWS was asked"))
    with pytest.raises(ConfigError, match="^requirements.yml is not locked; run: bake.py deps$"):
        builder.build(project.image("sample"), BuildOptions(), Run.start(project.state_dir, "build"))
