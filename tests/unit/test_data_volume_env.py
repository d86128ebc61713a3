"""bakery_deploy.data_volume: the local rules as they were, and the aws rules (one EBS volume per slot, handed over
one slot at a time, terminate before launch)."""

import pytest

from bakery.cli import main as bake_main
from bakery.config import Project
from bakery.environments import load_environment
from bakery.errors import ConfigError

pytestmark = pytest.mark.unit

AWS = "aws: {auto_scaling_group: web-qa, launch_template: web-qa-lt}"


def write_deploy(root, env, body):
    path = root / "inventories" / env / "group_vars" / "all" / "deploy.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def aws_env(instances=2, refresh="{min_healthy_percentage: 50, max_healthy_percentage: 100}",
            volume="{name: data, path: /var/lib/webapp}"):
    return (f"bakery_deploy: {{target: aws, image: webapp, instances: {instances}, refresh: {refresh}, {AWS}, "
            f"data_volume: {volume}}}\n")


@pytest.mark.parametrize("instances, min_healthy", [(1, 0), (2, 50), (3, 66), (4, 75), (10, 90)])
def test_aws_takes_a_volume_per_instance_one_slot_at_a_time(inventory_project, instances, min_healthy):
    write_deploy(inventory_project, "stateful",
                 aws_env(instances, f"{{min_healthy_percentage: {min_healthy}, max_healthy_percentage: 100}}"))
    env = load_environment(Project(inventory_project), "stateful")
    volume = env.data_volume
    assert (volume.name, volume.path, volume.size_gb, volume.label) == ("data", "/var/lib/webapp", 8, "bakery-data")


def test_aws_takes_its_size_and_label(inventory_project):
    write_deploy(inventory_project, "stateful",
                 aws_env(volume="{name: data, path: /srv/data, size_gb: 100, label: webapp_data-1}"))
    volume = load_environment(Project(inventory_project), "stateful").data_volume
    assert (volume.size_gb, volume.label) == (100, "webapp_data-1")


@pytest.mark.parametrize("body, message", [
    (aws_env(instances=0), "bakery_deploy.data_volume needs instances: 1 or more on aws (one volume per instance), "
                           "got 0"),
    (aws_env(refresh="{min_healthy_percentage: 0, max_healthy_percentage: 150}"),
     "bakery_deploy.data_volume needs refresh.max_healthy_percentage 100 on aws"),
    (aws_env(refresh="{min_healthy_percentage: 60, max_healthy_percentage: 100}"),
     "bakery_deploy.data_volume with instances: 2 needs refresh.min_healthy_percentage at most 50 on aws "
     "(one slot at a time), got 60"),
    (aws_env(instances=1, refresh="{min_healthy_percentage: 1, max_healthy_percentage: 100}"),
     "needs refresh.min_healthy_percentage at most 0"),
    (aws_env(volume="{name: data, path: /d, size_gb: 0}"),
     "bakery_deploy.data_volume.size_gb must be from 1 to 16384, got 0"),
    (aws_env(volume="{name: data, path: /d, size_gb: 20000}"), "size_gb must be from 1 to 16384, got 20000"),
    (aws_env(volume="{name: data, path: /d, size_gb: big}"), "size_gb must be an integer, got 'big'"),
    (aws_env(volume="{name: data, path: /d, label: a-label-of-17-byte}"),
     "bakery_deploy.data_volume.label 'a-label-of-17-byte' must be 1 to 16 letters, digits, '_' or '-' "
     "starting with a letter or digit (an ext4 label)"),
    (aws_env(volume="{name: data, path: /d, label: -data}"), "label '-data' must be 1 to 16"),
    (aws_env(volume="{name: data, path: /d, label: 'with space'}"), "label 'with space' must be 1 to 16"),
    (aws_env(volume="{name: webapp-state-volume, path: /d}"),
     "label 'bakery-webapp-state-volume' must be 1 to 16"),
    (aws_env(volume="{name: data, path: var/lib/webapp}"),
     "bakery_deploy.data_volume.path must be an absolute path of letters, digits, '.', '_', '-' and '/' "
     "(not / itself, no '..'), got 'var/lib/webapp'"),
    (aws_env(volume="{name: data, path: /}"), "path must be an absolute path"),
    (aws_env(volume="{name: data, path: '/a/../etc'}"), "path must be an absolute path"),
    (aws_env(volume="{name: 'Data Vol', path: /d}"),
     "bakery_deploy.data_volume.name must be lower-case letters, digits, '-' and '_', got 'Data Vol'"),
    (aws_env(volume="{name: data, path: /d, sizegb: 3}"), "bakery_deploy.data_volume: unknown key 'sizegb'"),
])
def test_aws_data_volume_rules_name_file_field_and_value(inventory_project, body, message):
    write_deploy(inventory_project, "bad", body)
    with pytest.raises(ConfigError) as err:
        load_environment(Project(inventory_project), "bad")
    text = str(err.value)
    assert message in text and "inventories/bad/group_vars/all/deploy.yml" in text and "\n" not in text


def test_the_local_rules_stay_as_they_were(inventory_project):
    write_deploy(inventory_project, "one", "bakery_deploy: {image: webapp, lb_port: 19000, instances: 1, "
                                           "refresh: {min_healthy_percentage: 0}, "
                                           "data_volume: {name: d, path: /var/lib/webapp}}\n")
    assert load_environment(Project(inventory_project), "one").data_volume.name == "d"
    write_deploy(inventory_project, "two", "bakery_deploy: {image: webapp, lb_port: 19000, instances: 2, "
                                           "refresh: {min_healthy_percentage: 0}, "
                                           "data_volume: {name: d, path: /var/lib/webapp}}\n")
    with pytest.raises(ConfigError, match="needs instances: 1 and refresh.min_healthy_percentage: 0"):
        load_environment(Project(inventory_project), "two")
    write_deploy(inventory_project, "sized", "bakery_deploy: {image: webapp, lb_port: 19000, instances: 1, "
                                             "refresh: {min_healthy_percentage: 0}, "
                                             "data_volume: {name: d, path: /v, size_gb: 4}}\n")
    with pytest.raises(ConfigError, match="unknown key 'size_gb'"):
        load_environment(Project(inventory_project), "sized")


def test_bake_py_refuses_a_bad_aws_data_volume_in_one_line_with_exit_2(inventory_project, capsys):
    write_deploy(inventory_project, "bad", aws_env(refresh="{min_healthy_percentage: 0, max_healthy_percentage: 200}"))
    code = bake_main(["--project", str(inventory_project), "status", "--env", "bad"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "max_healthy_percentage 100 on aws" in err and "got 200" in err


@pytest.mark.parametrize("overrides, message", [
    ({"max_healthy_percentage": 150}, "needs --max-healthy-percentage 100 on aws"),
    ({"min_healthy_percentage": 75}, "needs --min-healthy-percentage at most 50 on aws"),
])
def test_deploy_flags_keep_the_hand_over_rules(inventory_project, overrides, message):
    """A flag that would launch before terminating (or replace two slots at once) is refused before any release."""
    from bakery.fleets.planning import env_preferences

    write_deploy(inventory_project, "stateful", aws_env())
    env = load_environment(Project(inventory_project), "stateful")
    assert env_preferences(env, {}).max_healthy_percentage == 100
    with pytest.raises(ConfigError, match=message):
        env_preferences(env, overrides)
