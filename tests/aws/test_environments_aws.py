"""bakery_deploy.aws in an environment's deploy.yml: validated to one line naming file, field and value."""

from __future__ import annotations

import shutil

import pytest

from bakery.config import Project
from bakery.environments import load_environment
from bakery.errors import ConfigError
from tests.conftest import REPO, bake

pytestmark = pytest.mark.aws

GOOD = "bakery_deploy: {target: aws, image: webapp, aws: {auto_scaling_group: web-qa, launch_template: web-qa-lt%s}}\n"


@pytest.fixture
def root(tmp_path):
    shutil.copy(REPO / "bakery.yml", tmp_path / "bakery.yml")
    return tmp_path


def load(root, body):
    path = root / "inventories" / "cloud" / "group_vars" / "all" / "deploy.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return load_environment(Project(root), "cloud")


def test_an_aws_environment_needs_no_lb_port_and_gets_defaults(root):
    env = load(root, GOOD % ", region: eu-west-1, alarms: [web-5xx]")
    assert env.target == "aws" and env.lb_port == 0
    assert env.aws == {"auto_scaling_group": "web-qa", "launch_template": "web-qa-lt", "instance_type": "",
                       "region": "eu-west-1", "log_group": "", "alarms": ["web-5xx"]}


@pytest.mark.parametrize("body, message", [
    ("bakery_deploy: {target: aws, image: webapp}\n",
     "bakery_deploy.aws.auto_scaling_group is required for target aws"),
    ("bakery_deploy: {target: aws, image: webapp, aws: {auto_scaling_group: g}}\n",
     "bakery_deploy.aws.launch_template is required"),
    (GOOD % ", launch_templat: x", "bakery_deploy.aws: unknown key 'launch_templat'"),
    (GOOD % ", region: Frankfurt", "bakery_deploy.aws.region must be a region name like eu-west-1, got 'Frankfurt'"),
    (GOOD % ", instance_type: big",
     "bakery_deploy.aws.instance_type must be an EC2 instance type like t3.small, got 'big'"),
    (GOOD % ", alarms: web-5xx",
     "bakery_deploy.aws.alarms must be a list of up to 10 CloudWatch alarm names, got 'web-5xx'"),
    (GOOD % ", auto_scaling_group: 7", "bakery_deploy.aws.auto_scaling_group must be a string, got 7"),
])
def test_bad_aws_settings_are_one_line(root, body, message):
    with pytest.raises(ConfigError) as err:
        load(root, body)
    text = str(err.value)
    assert message in text and "inventories/cloud/group_vars/all/deploy.yml" in text and "\n" not in text


def test_bake_py_refuses_bad_aws_settings_with_exit_2(root):
    path = root / "inventories" / "cloud" / "group_vars" / "all" / "deploy.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(GOOD % ", launch_templat: x")
    out = bake(root, "deploy", "webapp", "--env", "cloud", timeout=60)
    assert out.rc == 2 and out.stdout == ""
    assert out.stderr.strip() == ("bake.py: error: inventories/cloud/group_vars/all/deploy.yml: bakery_deploy.aws: "
                                  "unknown key 'launch_templat'; known keys: alarms, auto_scaling_group, "
                                  "instance_type, launch_template, log_group, region")


def test_a_log_group_must_be_a_cloudwatch_logs_group_name(proj):
    deploy = proj / "inventories" / "cloud" / "group_vars" / "all" / "deploy.yml"
    deploy.parent.mkdir(parents=True)
    deploy.write_text("bakery_deploy:\n  target: aws\n  image: sample\n  aws:\n    auto_scaling_group: g\n"
                      "    launch_template: t\n    log_group: no-slash\n")
    message = r"bakery_deploy.aws.log_group must be a CloudWatch Logs group name starting with '/', got 'no-slash'"
    with pytest.raises(ConfigError, match=message):
        load_environment(Project(proj), "cloud")
