"""bakery.yml's `aws:` section: the names the IAM policy is rendered from, and a subnet never without its security
groups (Image Builder refuses `subnetId` without `securityGroupIds`), nor Packer without them (its temporary group
would need every group of the account opened and deleted). Each bad value is one line, exit 2."""

from __future__ import annotations

import os

import pytest

from bakery.aws.settings import AwsSettings, load_aws_settings
from bakery.errors import ConfigError
from tests.conftest import bake

pytestmark = pytest.mark.unit


def test_a_subnet_without_security_groups_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as caught:
        load_aws_settings({"subnet_id": "subnet-0abc"})
    assert caught.value.exit_code == 2
    assert "aws.security_group_ids is empty" in str(caught.value) and "\n" not in str(caught.value)


def test_a_subnet_with_security_groups_and_no_network_at_all_load():
    assert load_aws_settings({"subnet_id": "subnet-0abc", "security_group_ids": ["sg-0abc"]}).subnet_id == "subnet-0abc"
    assert load_aws_settings({"builder": "imagebuilder"}).subnet_id == ""


def test_packer_without_security_groups_is_refused_naming_the_field(proj):
    from bakery.aws.settings import check_packer_network

    for data in ({}, {"builder": "packer", "security_group_ids": []}):
        with pytest.raises(ConfigError) as caught:
            check_packer_network(load_aws_settings(data))
        assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
        assert "aws.security_group_ids is empty and aws.builder is packer" in str(caught.value)
    check_packer_network(load_aws_settings({"security_group_ids": ["sg-0abc"]}))
    check_packer_network(load_aws_settings({"builder": "imagebuilder"}))
    (proj / "bakery.yml").write_text("default_base: bookworm\naws:\n  regions: [eu-west-1]\n")
    outcome = bake(proj, "iam-policy", "--account", "111122223333")
    assert outcome.rc == 2 and "aws.security_group_ids is empty" in outcome.stderr and "Traceback" not in outcome.stderr
    assert bake(proj, "iam-policy", "--account", "111122223333", "--no-build").rc == 0  # a promote role bakes not


def test_the_policy_names_load_with_compatible_defaults():
    settings = load_aws_settings({"instance_profile": "bakery-build", "build_role": "bakery-build-role",
                                  "instance_roles": ["bakery-qa-instance"], "log_groups": ["/bakery/qa", "/ops/*"],
                                  "security_group_ids": ["sg-0abc"]})
    assert (settings.build_role, settings.instance_roles) == ("bakery-build-role", ["bakery-qa-instance"])
    assert AwsSettings().log_groups == ["/bakery/*"] and AwsSettings().instance_roles == []
    by_env = load_aws_settings({"instance_roles": {"qa": "bakery-qa-instance", "prod": "bakery-prod-instance"},
                                "builder": "imagebuilder"})
    assert by_env.instance_roles == {"qa": "bakery-qa-instance", "prod": "bakery-prod-instance"}


@pytest.mark.parametrize("data, field", [
    ({"build_role": "arn:aws:iam::111122223333:role/x"}, "aws.build_role"),
    ({"instance_roles": ["ok", "no spaces"]}, "aws.instance_roles"),
    ({"instance_roles": "bakery-qa"}, "aws.instance_roles"),
    ({"instance_roles": {"qa": "no spaces"}}, "aws.instance_roles"),
    ({"instance_roles": {"qa": ["bakery-qa"]}}, "aws.instance_roles"),
    ({"instance_profile": "a/b"}, "aws.instance_profile"),
    ({"log_groups": ["/bakery/*/x*", "*"]}, "aws.log_groups"),
    ({"log_groups": ["*"]}, "aws.log_groups"),
    ({"subnet_id": "vpc-0abc", "security_group_ids": ["sg-0abc"]}, "aws.subnet_id"),
])
def test_a_bad_name_is_one_line_naming_its_field(data, field):
    with pytest.raises(ConfigError) as caught:
        load_aws_settings(data)
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_bake_py_exits_2_when_bakery_yml_has_a_subnet_without_groups(proj):
    (proj / "bakery.yml").write_text("default_base: bookworm\naws:\n  subnet_id: subnet-0abc\n")
    outcome = bake(proj, "iam-policy", "--account", "111122223333")
    assert outcome.rc == 2 and "aws.security_group_ids" in outcome.stderr and "Traceback" not in outcome.stderr


def test_iam_policy_asks_for_the_build_role_when_a_profile_is_set(proj):
    (proj / "bakery.yml").write_text("default_base: bookworm\naws:\n  instance_profile: bakery-build\n"
                                     "  security_group_ids: [sg-0abc]\n")
    outcome = bake(proj, "iam-policy", "--account", "111122223333")
    assert outcome.rc == 2 and "aws.build_role is empty" in outcome.stderr


def test_iam_policy_env_needs_instance_roles_by_environment(proj):
    (proj / "bakery.yml").write_text("default_base: bookworm\naws:\n  security_group_ids: [sg-0abc]\n"
                                     "  instance_roles: [bakery-qa-instance]\n")
    outcome = bake(proj, "iam-policy", "--account", "111122223333", "--env", "qa")
    assert outcome.rc == 2 and "aws.instance_roles is a list" in outcome.stderr and "Traceback" not in outcome.stderr


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """bake.py runs with no AWS credentials anywhere (no variables, files or instance metadata): STS is never
    reached, and a command that would ask it stops with 'no AWS credentials found'."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there, should a call go out
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def one_line_exit_2(outcome) -> str:
    assert outcome.rc == 2 and outcome.stderr.count("\n") == 1 and "Traceback" not in outcome.stderr, outcome
    return outcome.stderr


def test_iam_policy_checks_env_names_and_instance_roles_before_asking_sts_for_the_account(proj, no_credentials):
    settings = "default_base: bookworm\naws:\n  security_group_ids: [sg-0abc]\n  instance_roles: "
    (proj / "bakery.yml").write_text(settings + "{qa: bakery-qa-instance}\n")
    assert "--env 'Bad Env' is not an environment name" in one_line_exit_2(bake(proj, "iam-policy", "--env", "Bad Env"))
    assert "aws.instance_roles names no role for --env prod" in one_line_exit_2(
        bake(proj, "iam-policy", "--env", "qa", "--env", "prod"))
    # a good --env goes on to STS, which without credentials is the one thing that stops it
    assert "no AWS credentials found" in one_line_exit_2(bake(proj, "iam-policy", "--env", "qa"))
    (proj / "bakery.yml").write_text(settings + "[bakery-qa-instance]\n")
    assert "aws.instance_roles is a list" in one_line_exit_2(bake(proj, "iam-policy", "--env", "qa"))


@pytest.mark.parametrize("flags", [("--env", "qa"), ("--no-build",), ("--account", "111122223333")])
def test_iam_policy_for_the_image_builder_instance_refuses_the_ci_role_flags(proj, no_credentials, flags):
    (proj / "bakery.yml").write_text("default_base: bookworm\naws:\n  builder: imagebuilder\n"
                                     "  artifacts_bucket: bakery-artifacts\n  instance_roles: {qa: bakery-qa}\n")
    assert bake(proj, "iam-policy", "--for", "imagebuilder-instance").rc == 0  # no account, no STS
    stderr = one_line_exit_2(bake(proj, "iam-policy", "--for", "imagebuilder-instance", *flags))
    assert f"--for imagebuilder-instance does not take {flags[0]}" in stderr


def test_iam_policy_grants_the_data_volume_hand_over_only_where_an_environment_has_a_volume(proj):
    """Creating, attaching, detaching and stopping for a hand-over is rendered for the aws environments with
    data_volume:, not for every environment the role deploys to."""
    import json

    (proj / "bakery.yml").write_text("default_base: bookworm\naws:\n  security_group_ids: [sg-0abc]\n")
    deploy = proj / "inventories" / "web" / "group_vars" / "all" / "deploy.yml"
    deploy.parent.mkdir(parents=True, exist_ok=True)
    body = ("bakery_deploy: {target: aws, image: webapp, instances: 1, aws: {auto_scaling_group: web, "
            "launch_template: web-lt}, refresh: {min_healthy_percentage: 0, max_healthy_percentage: 100}")
    deploy.write_text(body + "}\n")

    def sids() -> set[str]:
        outcome = bake(proj, "iam-policy", "--account", "111122223333")
        assert outcome.rc == 0, outcome.stderr
        return {s["Sid"] for s in json.loads(outcome.stdout)["Statement"]}

    assert not {"NewDataVolumes", "HandOver"} & sids()
    deploy.write_text(body + ", data_volume: {name: items, path: /var/lib/webapp}}\n")
    assert {"NewDataVolumes", "HandOver"} <= sids()
