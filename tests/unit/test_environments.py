
import pytest

from bakery.config import Project
from bakery.environments import REFRESH_CHOICES, RefreshPreferences, environment_names, load_environment
from bakery.errors import ConfigError
from bakery.fleets.planning import effective_preferences

pytestmark = pytest.mark.unit


def write_deploy(inventory_project, env, body):
    path = inventory_project / "inventories" / env / "group_vars" / "all" / "deploy.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def test_shipped_environments_load(inventory_project):
    project = Project(inventory_project)
    assert environment_names(project) == ["dev", "prod", "qa"]
    qa = load_environment(project, "qa")
    assert qa.instances == 4 and qa.lb_port == 18081 and qa.promote_from == "dev"
    assert qa.require_verified == ("container", "vm")
    assert qa.refresh.checkpoint_percentages == [50, 100]
    assert qa.runtime["ENVIRONMENT"] == "qa" and qa.runtime["DATABASE_PASSWORD"].startswith("ssm:")
    assert 'ENVIRONMENT="qa"' in qa.runtime_env_text()
    assert load_environment(project, "dev").require_verified == ()
    assert load_environment(project, "prod").require_verified == ("container", "vm")


@pytest.mark.parametrize("body, message", [
    ("bakery_deploy: {image: webapp, lb_port: 19000, instancez: 2}\n", "bakery_deploy: unknown key 'instancez'"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, instances: two}\n",
     "bakery_deploy.instances must be an integer, got 'two'"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, refresh: {min_healthy_percentage: 120}}\n",
     "bakery_deploy.refresh.min_healthy_percentage must be from 0 to 100, got 120"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, refresh: {checkpoint_percentages: [50, 20]}}\n",
     "checkpoint_percentages must rise strictly"),
    ("bakery_deploy: {image: webapp}\n", "bakery_deploy.lb_port is required"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, target: gcp}\n", "bakery_deploy.target must be one of local, aws"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, require_verified: maybe}\n",
     "require_verified must be true, false or a list of container, vm and aws (each once), got 'maybe'"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, require_verified: [vm, kvm]}\n",
     "require_verified must be true, false or a list of container, vm and aws (each once), got ['vm', 'kvm']"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, require_verified: [vm, vm]}\n",
     "require_verified must be true, false or a list of container, vm and aws (each once), got ['vm', 'vm']"),
    ("bakery_deploy: {image: webapp, target: aws, require_verified: [container, vm], aws: {region: eu-west-1}}\n",
     "bakery_deploy.require_verified lists vm, which an aws environment cannot get (verify --target aws boots "
     "the AMI's own disk): use [container], [aws] or [container, aws]"),
    ("bakery_deploy: {image: webapp, target: aws, require_verified: [aws, vm], aws: {region: eu-west-1}}\n",
     "bakery_deploy.require_verified lists vm, which an aws environment cannot get"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, require_verified: [container, aws]}\n",
     "bakery_deploy.require_verified lists aws, which only an aws environment can get (verify --target aws verifies "
     "an AMI): use [container], [vm] or [container, vm]"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, require_verified: []}\n",
     "require_verified must be true, false or a list"),
    ("bakery_deploy: {image: webapp, lb_port: 19000, instances: 2, data_volume: {name: d, path: /var/lib/webapp}}\n",
     "data_volume needs instances: 1 and refresh.min_healthy_percentage: 0"),
])
def test_invalid_deploy_settings_name_file_field_and_value(inventory_project, body, message):
    write_deploy(inventory_project, "bad", body)
    with pytest.raises(ConfigError) as err:
        load_environment(Project(inventory_project), "bad")
    assert message in str(err.value) and "inventories/bad/group_vars/all/deploy.yml" in str(err.value)


@pytest.mark.parametrize("value, kinds", [
    ("true", ("container",)), ("false", ()), ("[container]", ("container",)), ("[aws]", ("aws",)),
    ("[container, aws]", ("container", "aws")), ("[aws, container]", ("aws", "container")),
])
def test_an_aws_environment_may_require_the_aws_verification(inventory_project, value, kinds):
    write_deploy(inventory_project, "cloud", "bakery_deploy: {image: webapp, target: aws, require_verified: "
                 f"{value}, aws: {{auto_scaling_group: web, launch_template: web}}}}\n")
    assert load_environment(Project(inventory_project), "cloud").require_verified == kinds


def test_promotion_cycle_is_refused(inventory_project):
    write_deploy(inventory_project, "dev", "bakery_deploy: {image: webapp, lb_port: 19000, promote_from: prod}\n")
    with pytest.raises(ConfigError, match="promotion cycle"):
        load_environment(Project(inventory_project), "prod")


def test_secrets_must_be_references(inventory_project):
    path = inventory_project / "inventories" / "qa" / "group_vars" / "all" / "runtime.yml"
    path.write_text("bakery_runtime:\n  DATABASE_PASSWORD: hunter2\n")
    with pytest.raises(ConfigError, match="DATABASE_PASSWORD looks like a secret given by value"):
        load_environment(Project(inventory_project), "qa")
    path.write_text("bakery_runtime:\n  lower_case: x\n")
    with pytest.raises(ConfigError, match="a bakery_runtime key of 10 characters is not upper-case"):
        load_environment(Project(inventory_project), "qa")


def test_unknown_environment(inventory_project):
    with pytest.raises(ConfigError, match="unknown environment 'nope'.*known environments: dev, prod, qa"):
        load_environment(Project(inventory_project), "nope")


@pytest.mark.parametrize("value, refused", [
    ("postgres://app:hunter2@db.internal:5432/app", True),
    ("redis://:s3cret@cache:6379/0", True),
    ("amqp://guest:guest@mq/vhost?heartbeat=30", True),
    # a user without a password; the password comes from DATABASE_PASSWORD
    ("postgres://app@db.internal:5432/app", False),
    ("http://payments.qa.internal:8080/v1/@me", False),  # a port and an '@' in the path are no credentials
    ("ssm:/webapp/qa/database-url", False),
])
def test_a_password_in_a_url_is_refused_like_a_secret_given_by_value(inventory_project, value, refused):
    path = inventory_project / "inventories" / "qa" / "group_vars" / "all" / "runtime.yml"
    path.write_text(f'bakery_runtime:\n  DATABASE_URL: "{value}"\n')
    if not refused:
        assert load_environment(Project(inventory_project), "qa").runtime["DATABASE_URL"] == value
        return
    with pytest.raises(ConfigError) as err:
        load_environment(Project(inventory_project), "qa")
    text = str(err.value)
    assert text.startswith("inventories/qa/group_vars/all/runtime.yml: "
                           "bakery_runtime.DATABASE_URL carries a password in its URL")
    assert "DATABASE_PASSWORD" in text and value.split("@")[0].split(":")[-1] not in text and "\n" not in text


def test_one_rule_for_refresh_preferences_in_files_and_flags(inventory_project):
    """environments.check_preferences is the one validator: the file's message names file and field, the flags'
    the flag."""
    write_deploy(inventory_project, "bad", "bakery_deploy: {image: webapp, lb_port: 19000, "
                                           "refresh: {min_healthy_percentage: 100}}\n")
    with pytest.raises(ConfigError) as err:
        load_environment(Project(inventory_project), "bad")
    assert str(err.value) == ("inventories/bad/group_vars/all/deploy.yml: bakery_deploy.refresh.min_healthy_percentage "
                              "100 needs bakery_deploy.refresh.max_healthy_percentage above 100 to make progress")
    with pytest.raises(ConfigError) as err:
        effective_preferences(RefreshPreferences(), {"min_healthy_percentage": 100})
    assert str(err.value) == "--min-healthy-percentage 100 needs --max-healthy-percentage above 100 to make progress"


def test_held_back_instance_preferences_default_to_ignore_take_aws_values_in_any_case_and_refuse_others(
        inventory_project):
    """standby_instances / scale_in_protected_instances: AWS's values (StartInstanceRefresh), Ignore by default (an
    operator protected or parked those instances on purpose); the flags offer the same values."""
    from bakery.cli.common import refresh_options

    project = Project(inventory_project)
    defaults = load_environment(project, "qa").refresh
    assert (defaults.standby_instances, defaults.scale_in_protected_instances) == ("Ignore", "Ignore")
    write_deploy(inventory_project, "held", "bakery_deploy: {image: webapp, lb_port: 19000, refresh: "
                                            "{standby_instances: terminate, scale_in_protected_instances: Wait}}\n")
    held = load_environment(project, "held").refresh
    assert (held.standby_instances, held.scale_in_protected_instances) == ("Terminate", "Wait")
    write_deploy(inventory_project, "held", "bakery_deploy: {image: webapp, lb_port: 19000, refresh: "
                                            "{scale_in_protected_instances: Terminate}}\n")
    with pytest.raises(ConfigError) as err:
        load_environment(project, "held")
    assert str(err.value) == ("inventories/held/group_vars/all/deploy.yml: bakery_deploy.refresh."
                              "scale_in_protected_instances must be one of Ignore, Wait, Refresh, got 'Terminate'")
    with pytest.raises(ConfigError, match="--standby-instances must be one of Ignore, Wait, Terminate, got 'Refresh'"):
        effective_preferences(RefreshPreferences(), {"standby_instances": "Refresh"})
    params = {p.name: p for p in refresh_options(lambda **kw: None).__click_params__}
    for key, choices in REFRESH_CHOICES.items():
        assert sorted(params[key].type.choices) == sorted(choices)
