"""Environments: inventories/<env>/group_vars/all/{deploy,runtime}.yml, loaded and validated.

`deploy.yml` holds `bakery_deploy` (target, instances, health check, load balancer port, refresh preferences with
the semantics of EC2 Auto Scaling instance refresh, the verification gate, promote_from); `runtime.yml` holds
`bakery_runtime`: the runtime config delivered at launch (the UserData equivalent), never baked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakery import runtime_file, runtime_grammar
from bakery.aws.settings import REGION_RE
from bakery.config import NAME_RE, Project, load_yaml
from bakery.data_volume_rules import aws_data_volume
from bakery.errors import ConfigError
from bakery.provenance import sha256_json

TARGETS = ("local", "aws")
# bakery_deploy.aws: the environment on EC2 Auto Scaling; region empty = bakery.yml's aws.region, else the AWS chain
AWS_DEPLOY_DEFAULTS: dict[str, Any] = {"auto_scaling_group": "", "launch_template": "", "instance_type": "",
                                       "region": "", "alarms": [], "log_group": ""}
LOG_GROUP_RE = re.compile(r"^/[\w./#-]{1,511}$")  # CloudWatch Logs group names; bakery's are /bakery/<env>
AWS_REQUIRED = ("auto_scaling_group", "launch_template")
INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")


@dataclass
class HealthCheck:
    path: str = "/health"
    port: int = 8080
    interval_ms: int = 500
    rise: int = 2
    fall: int = 2
    timeout_ms: int = 2000


@dataclass
class RefreshPreferences:
    """The EC2 Auto Scaling instance refresh preferences, one to one."""

    min_healthy_percentage: int = 90
    max_healthy_percentage: int = 100
    instance_warmup: int = 5
    checkpoint_percentages: list[int] = field(default_factory=list)
    checkpoint_delay: int = 0
    skip_matching: bool = True
    auto_rollback: bool = True
    bake_time: int = 0
    health_check_grace: int = 60  # seconds a new instance may take to pass its health check
    # Instances an operator held back on purpose (aws only; the local target has neither): leave them, rather than
    # AWS's default Wait (an hour, then the refresh fails) or replacing what someone protected.
    standby_instances: str = "Ignore"
    scale_in_protected_instances: str = "Ignore"


# The integer preferences and the values EC2 Auto Scaling accepts for them (health_check_grace is bakery's own).
REFRESH_RANGES = {"min_healthy_percentage": (0, 100), "max_healthy_percentage": (100, 200),
                  "instance_warmup": (0, 3600), "checkpoint_delay": (0, 172800), "bake_time": (0, 86400),
                  "health_check_grace": (1, 3600)}
# The string preferences and the values EC2 Auto Scaling accepts (StartInstanceRefresh's StandbyInstances and
# ScaleInProtectedInstances).
REFRESH_CHOICES = {"standby_instances": ("Ignore", "Wait", "Terminate"),
                   "scale_in_protected_instances": ("Ignore", "Wait", "Refresh")}


def check_preferences(prefs: RefreshPreferences, name: Callable[[str], str], where: str = "") -> RefreshPreferences:
    """The rules refresh preferences must follow, one place for deploy.yml and the deploy flags alike.

    name(field) is the field as the user wrote it (bakery_deploy.refresh.min_healthy_percentage in the file,
    --min-healthy-percentage on the command line); `where` starts every message (the file). Returns prefs."""
    for key, (low, high) in REFRESH_RANGES.items():
        value = getattr(prefs, key)
        if not low <= value <= high:
            raise ConfigError(f"{where}{name(key)} must be from {low} to {high}, got {value}")
    for key, choices in REFRESH_CHOICES.items():
        if getattr(prefs, key) not in choices:
            raise ConfigError(f"{where}{name(key)} must be one of {', '.join(choices)}, got {getattr(prefs, key)!r}")
    cps = prefs.checkpoint_percentages
    if cps != sorted(set(cps)) or any(not 1 <= c <= 100 for c in cps) or (cps and cps[-1] != 100):
        raise ConfigError(f"{where}{name('checkpoint_percentages')} must rise strictly from 1 to 100 and end at 100, "
                          f"got {cps}")
    low, high = prefs.min_healthy_percentage, prefs.max_healthy_percentage
    if high < low:
        raise ConfigError(f"{where}{name('max_healthy_percentage')} must not be below "
                          f"{name('min_healthy_percentage')} (got {low} and {high})")
    if low == 100 and high == 100:
        raise ConfigError(f"{where}{name('min_healthy_percentage')} 100 needs {name('max_healthy_percentage')} "
                          "above 100 to make progress")
    return prefs


@dataclass
class DataVolume:
    name: str
    path: str
    size_gb: int = 8  # aws: each slot's EBS volume
    label: str = ""  # aws: the ext4 label the instance mounts it by (default bakery-<name>)



@dataclass
class Environment:
    name: str
    image: str
    target: str = "local"
    instances: int = 2
    lb_port: int = 0
    require_verified: tuple[str, ...] = ("container",)  # the verification kinds the gate requires
    promote_from: str | None = None
    health_check: HealthCheck = field(default_factory=HealthCheck)
    refresh: RefreshPreferences = field(default_factory=RefreshPreferences)
    data_volume: DataVolume | None = None
    runtime: dict[str, str] = field(default_factory=dict)
    aws: dict[str, Any] = field(default_factory=dict)
    path: Path = Path()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @property
    def runtime_refresh(self) -> dict[str, int]:
        """Keys re-resolved live -> seconds (runtime.yml's `refresh:`), carried in `runtime` as BAKERY_REFRESH."""
        return runtime_grammar.refresh_intervals(self.runtime.get("BAKERY_REFRESH", ""), "runtime config")

    def runtime_env_text(self, params: str | None = None) -> str:
        """The env file delivered at launch; params: BAKERY_PARAMS (local, aws, off; None: the applier decides)."""
        return runtime_grammar.render(self.runtime, {"BAKERY_PARAMS": params} if params is not None else None)

    def config_digest(self) -> str:
        return sha256_json(self.runtime)  # BAKERY_REFRESH is one of the values: a changed interval is a change


def parse_env_file(text: str, source: str = "the runtime env file") -> dict[str, str]:
    """The inverse of Environment.runtime_env_text (without the keys a launch adds); ConfigError when off-grammar."""
    return runtime_grammar.parse_config(text, source)


DEPLOY_KEYS = {"target", "image", "instances", "lb_port", "require_verified", "promote_from", "health_check", "refresh",
               "data_volume", "aws"}


def environment_names(project: Project) -> list[str]:
    base = project.root / "inventories"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / "group_vars" / "all" / "deploy.yml").is_file())


def load_environment(project: Project, name: str, check_promotion: bool = True) -> Environment:
    """Load and validate one environment; every problem is one line naming file, field and value."""
    if not NAME_RE.match(name):
        raise ConfigError(f"environment name '{name}' is invalid (lower-case letters, digits, '-', '_')")
    folder = project.root / "inventories" / name
    deploy_file = folder / "group_vars" / "all" / "deploy.yml"
    if not deploy_file.is_file():
        known = ", ".join(environment_names(project)) or "none"
        raise ConfigError(f"unknown environment '{name}': {deploy_file} does not exist (known environments: {known})")
    deploy = _mapping(load_yaml(deploy_file), deploy_file, "the file")
    settings = _mapping(deploy.get("bakery_deploy"), deploy_file, "bakery_deploy")
    rel = _rel(project, deploy_file)
    _unknown(settings, DEPLOY_KEYS, rel, "bakery_deploy")
    env = Environment(name=name, image=_str(settings, "image", rel, required=True), path=folder)
    env.target = _choice(settings, "target", TARGETS, rel, env.target)
    env.instances = _int(settings, "instances", rel, env.instances, low=0, high=50)
    env.lb_port = _int(settings, "lb_port", rel, 0, low=1024, high=65535, required=env.target == "local")
    env.require_verified = _verified_kinds(settings.get("require_verified", True), rel, env.target)
    env.promote_from = _str(settings, "promote_from", rel) or None
    env.aws = _aws(settings.get("aws"), deploy_file, rel, required=env.target == "aws")
    env.health_check = _health_check(settings.get("health_check"), deploy_file, rel)
    env.refresh = _refresh(settings.get("refresh"), deploy_file, rel)
    if settings.get("data_volume") is not None:
        env.data_volume = _data_volume(settings["data_volume"], env, deploy_file, rel)
    env.runtime = _runtime(folder / "group_vars" / "all" / "runtime.yml", project)
    env.runtime.setdefault("ENVIRONMENT", name)
    if check_promotion and env.promote_from:
        _check_promotion_chain(project, env)
    return env


def _health_check(value: Any, path: Path, rel: str) -> HealthCheck:
    p = "bakery_deploy.health_check"
    hc = _mapping(value or {}, path, p)
    _unknown(hc, set(HealthCheck.__dataclass_fields__), rel, p)
    result = HealthCheck(
        path=_str(hc, "path", rel, prefix=p) or "/health",
        port=_int(hc, "port", rel, 8080, low=1, high=65535, prefix=p),
        interval_ms=_int(hc, "interval_ms", rel, 500, low=100, high=60000, prefix=p),
        rise=_int(hc, "rise", rel, 2, low=1, high=20, prefix=p),
        fall=_int(hc, "fall", rel, 2, low=1, high=20, prefix=p),
        timeout_ms=_int(hc, "timeout_ms", rel, 2000, low=100, high=60000, prefix=p),
    )
    if not result.path.startswith("/"):
        raise ConfigError(f"{rel}: {p}.path must start with '/', got '{result.path}'")
    return result


def _refresh(value: Any, path: Path, rel: str) -> RefreshPreferences:
    """bakery_deploy.refresh: each value's type here, the rules in check_preferences (shared with the deploy flags)."""
    p = "bakery_deploy.refresh"
    rf = _mapping(value or {}, path, p)
    _unknown(rf, set(RefreshPreferences.__dataclass_fields__), rel, p)
    defaults = RefreshPreferences()
    values: dict[str, Any] = {}
    for key, (low, high) in REFRESH_RANGES.items():
        values[key] = _int(rf, key, rel, getattr(defaults, key), low=low, high=high, prefix=p)
    for key in ("skip_matching", "auto_rollback"):
        values[key] = _bool(rf, key, rel, getattr(defaults, key), prefix=p)
    for key, choices in REFRESH_CHOICES.items():  # AWS's spelling, any case: wait -> Wait
        given = rf.get(key, getattr(defaults, key))
        values[key] = next((c for c in choices if isinstance(given, str) and c.lower() == given.lower()), given)
    checkpoints = rf.get("checkpoint_percentages") or []
    if not isinstance(checkpoints, list) or not all(type(c) is int for c in checkpoints):  # bool is no percentage
        raise ConfigError(f"{rel}: {p}.checkpoint_percentages must be a list of integers, got {checkpoints!r}")
    prefs = RefreshPreferences(**values, checkpoint_percentages=checkpoints)
    return check_preferences(prefs, lambda key: f"{p}.{key}", where=f"{rel}: ")


def _data_volume(value: Any, env: Environment, path: Path, rel: str) -> DataVolume:
    p = "bakery_deploy.data_volume"
    dv = _mapping(value, path, p)
    _unknown(dv, {"name", "path", "size_gb", "label"} if env.target == "aws" else {"name", "path"}, rel, p)
    volume = DataVolume(name=_str(dv, "name", rel, required=True, prefix=p),
                        path=_str(dv, "path", rel, required=True, prefix=p))
    if env.target == "aws":
        return aws_data_volume(dv, volume, env.instances, env.refresh, f"{rel}: ")
    if env.instances != 1 or env.refresh.min_healthy_percentage != 0:
        raise ConfigError(f"{rel}: {p} needs instances: 1 and refresh.min_healthy_percentage: 0 "
                          "(one instance per volume; the volume moves only after the old instance stopped)")
    return volume


def _aws(value: Any, path: Path, rel: str, required: bool) -> dict[str, Any]:
    """bakery_deploy.aws: which Auto Scaling group and launch template the environment is (required for target aws)."""
    p = "bakery_deploy.aws"
    if value is None and not required:
        return {}
    data = _mapping(value if value is not None else {}, path, p)
    _unknown(data, set(AWS_DEPLOY_DEFAULTS), rel, p)
    result: dict[str, Any] = dict(AWS_DEPLOY_DEFAULTS)
    for key in ("auto_scaling_group", "launch_template", "instance_type", "region", "log_group"):
        result[key] = _str(data, key, rel, "", prefix=p) or ""
        if key in AWS_REQUIRED and required and not result[key]:
            raise ConfigError(f"{rel}: {p}.{key} is required for target aws "
                              f"(the name of the environment's {key.replace('_', ' ')})")
    if result["region"] and not REGION_RE.match(result["region"]):
        raise ConfigError(f"{rel}: {p}.region must be a region name like eu-west-1, got '{result['region']}'")
    if result["instance_type"] and not INSTANCE_TYPE_RE.match(result["instance_type"]):
        raise ConfigError(f"{rel}: {p}.instance_type must be an EC2 instance type like t3.small, "
                          f"got '{result['instance_type']}'")
    if result["log_group"] and not LOG_GROUP_RE.match(result["log_group"]):
        raise ConfigError(f"{rel}: {p}.log_group must be a CloudWatch Logs group name starting with '/', "
                          f"got '{result['log_group']}'")
    alarms = data.get("alarms") or []
    if not isinstance(alarms, list) or not all(isinstance(a, str) and a for a in alarms) or len(alarms) > 10:
        raise ConfigError(f"{rel}: {p}.alarms must be a list of up to 10 CloudWatch alarm names, got {alarms!r}")
    result["alarms"] = alarms
    return result


def _runtime(path: Path, project: Project) -> dict[str, str]:
    """bakery_runtime of runtime.yml: read strictly (bakery.runtime_file), or {} when there is no file."""
    return runtime_file.load(path, _rel(project, path)) if path.is_file() else {}


def _check_promotion_chain(project: Project, env: Environment) -> None:
    seen = [env.name]
    current = env.promote_from
    while current:
        if current in seen:
            raise ConfigError(f"{_rel(project, env.path)}: promotion cycle: {' <- '.join([*seen, current])}")
        seen.append(current)
        source = load_environment(project, current, check_promotion=False)
        if source.image != env.image:
            raise ConfigError(f"{_rel(project, env.path)}: promote_from '{current}' deploys image '{source.image}', "
                              f"not '{env.image}'")
        current = source.promote_from


def _rel(project: Project, path: Path) -> str:
    try:
        return str(path.relative_to(project.root))
    except ValueError:
        return str(path)


def _mapping(value: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {what} must be a mapping, got {type(value).__name__}")
    return value


def _unknown(data: dict[str, Any], known: set[str], rel: str, where: str) -> None:
    bad = sorted(set(data) - known, key=str)
    if bad:
        raise ConfigError(f"{rel}: {where}: unknown key '{bad[0]}'; known keys: {', '.join(sorted(known))}")


def _label(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else f"bakery_deploy.{key}"


def _str(data, key, rel, default=None, required=False, prefix=""):
    value = data.get(key, default)
    if value is None:
        if required:
            raise ConfigError(f"{rel}: {_label(prefix, key)} is required")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{rel}: {_label(prefix, key)} must be a string, got {value!r}")
    return value


def _int(data, key, rel, default, low, high, required=False, prefix=""):
    if key not in data:
        if required:
            raise ConfigError(f"{rel}: {_label(prefix, key)} is required (an integer from {low} to {high})")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{rel}: {_label(prefix, key)} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{rel}: {_label(prefix, key)} must be from {low} to {high}, got {value}")
    return value


# The kinds a target's environment may require: vm boots the local version's disk, aws an AMI's own disk read back
# (bake.py verify --target aws); a kind of the other target could never be got.
TARGET_KINDS = {"local": ("container", "vm"), "aws": ("container", "aws")}
KIND_REFUSED = {"vm": "an aws environment cannot get (verify --target aws boots the AMI's own disk)",
                "aws": "only an aws environment can get (verify --target aws verifies an AMI)"}


def _verified_kinds(value, rel, target: str) -> tuple[str, ...]:
    """require_verified: true (a container verification), false (none), or a list of kinds: [container, vm] on the
    local target, [container, aws] on aws."""
    if isinstance(value, bool):
        return ("container",) if value else ()
    kinds = ("container", "vm", "aws")
    if not isinstance(value, list) or not value or not all(isinstance(k, str) and k in kinds for k in value) \
            or len(set(value)) != len(value):
        raise ConfigError(f"{rel}: bakery_deploy.require_verified must be true, false or a list of "
                          f"{', '.join(kinds[:-1])} and {kinds[-1]} (each once), got {value!r}")
    allowed = TARGET_KINDS[target]
    for kind in value:
        if kind not in allowed:
            first, second = allowed
            raise ConfigError(f"{rel}: bakery_deploy.require_verified lists {kind}, which {KIND_REFUSED[kind]}: use "
                              f"[{first}], [{second}] or [{first}, {second}]")
    return tuple(value)


def _bool(data, key, rel, default, prefix=""):
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{rel}: {_label(prefix, key)} must be true or false, got {value!r}")
    return value


def _choice(data, key, choices, rel, default):
    value = data.get(key, default)
    if value not in choices:
        raise ConfigError(f"{rel}: bakery_deploy.{key} must be one of {', '.join(choices)}, got {value!r}")
    return value
