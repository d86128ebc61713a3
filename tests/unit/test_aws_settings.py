"""bakery.yml's `aws:` section: the names the IAM policy is rendered from, and a subnet never without its security
groups (Image Builder refuses `subnetId` without `securityGroupIds`), nor Packer without them (its temporary group
would need every group of the account opened and deleted). Each bad value is one line, exit 2."""

from __future__ import annotations

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
