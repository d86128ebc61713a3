"""Which store an environment's parameters live in, and which references its runtime config holds.

The local target's environments keep them in .bakery/params/<env>/ (bakery.params.local_store), mounted read-only
into their instances; aws environments in SSM Parameter Store and Secrets Manager of the environment's region
(bakery.params.aws_store), read by the instances with their instance role.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery import runtime_grammar
from bakery.config import Project
from bakery.environments import Environment
from bakery.errors import ConfigError
from bakery.params import names
from bakery.params.local_store import LocalStore


@dataclass(frozen=True)
class Referenced:
    """One key of the runtime config whose value is a reference."""

    key: str
    ref: names.Reference
    refresh: int | None = None


def local_root(state_dir: Path, env_name: str) -> Path:
    """The local store of an environment: what `param set` writes and its instances mount at /etc/bakery/params."""
    return state_dir / "params" / env_name


def references(env: Environment) -> list[Referenced]:
    """Every key of the environment's runtime config that gives a reference, by key."""
    refresh = env.runtime_refresh
    found = []
    for key, value in sorted(env.runtime.items()):
        if key in runtime_grammar.OWNED_KEYS:
            continue
        ref = names.parse_reference(value, f"{env.name}: bakery_runtime.{key}")
        if ref is not None:
            found.append(Referenced(key, ref, refresh.get(key)))
    return found


def resolve_name(env: Environment, name: str) -> tuple[str | None, names.Reference]:
    """`param`'s NAME: a runtime key whose value is a reference (the key and its reference), or a reference itself
    (ssm:/path, secretsmanager:name) that the environment's config uses; ConfigError (exit 2) otherwise."""
    ref = names.parse_reference(name, f"param: NAME '{runtime_grammar.shown(name)}'")
    if ref is not None:
        if not any(_covers(r.ref, ref) for r in references(env)):
            used = ", ".join(str(r.ref) for r in references(env)) or "none"
            raise ConfigError(f"param: environment '{env.name}' does not use {ref} (its references: {used}); give "
                              "it in runtime.yml first")
        return None, ref
    if not runtime_grammar.KEY_RE.fullmatch(name):
        raise ConfigError(f"param: NAME '{runtime_grammar.shown(name)}' is neither a runtime key (upper-case) nor a "
                          "reference (ssm:/path, secretsmanager:name)")
    if name not in env.runtime or name in runtime_grammar.OWNED_KEYS:
        keys = ", ".join(r.key for r in references(env)) or "none"
        raise ConfigError(f"param: environment '{env.name}' has no runtime key '{name}' (keys with a reference: "
                          f"{keys}); add it to {env.path.name}'s runtime.yml as {name}: ssm:/path")
    ref = names.parse_reference(env.runtime[name], f"{env.name}: bakery_runtime.{name}")
    if ref is None:
        raise ConfigError(f"param: {env.name}'s runtime key {name} holds a plain value, not a reference: change it "
                          f"with ./bake.py config set --env {env.name} {name}=VALUE, or make it a reference "
                          f"({name}: ssm:/path) first")
    if ref.group:
        raise ConfigError(f"param: {env.name}'s runtime key {name} is a group ({ref}: every parameter directly "
                          f"under it); give one parameter, like {ref}NAME")
    return name, ref


def member_key(key: str, name: str) -> str:
    """A group member's key, by the applier's rule (roles/base/files/bakery_runtime/references.py, member_key):
    DB + /webapp/qa/db/read-only.url -> DB_READ_ONLY_URL."""
    last = name.rsplit("/", 1)[-1]
    return f"{key}_{last.upper().replace('-', '_').replace('.', '_')}"


def check_member(store: Any, env: Environment, ref: names.Reference) -> None:
    """A parameter under a group makes a key; refuse (ConfigError) one the applier would refuse at every boot: not a
    key, reserved, a key of the runtime config, or the key of another parameter under a group of the config."""
    groups = [item for item in references(env) if item.ref.group]
    mine = [item for item in groups if _covers(item.ref, ref)]
    if not mine:
        return
    taken = {key: f"a key of {env.name}'s runtime.yml" for key in env.runtime}
    for item in groups:
        for other in store.list_group(item.ref):
            if other != ref.name:
                taken.setdefault(member_key(item.key, other), f"the key of ssm:{other}")
    for item in mine:
        key = member_key(item.key, ref.name)
        why = (None if runtime_grammar.KEY_RE.fullmatch(key) else "not a runtime key") or runtime_grammar.reserved(key)
        if why is None and key in taken:
            why = f"already {taken[key]}"
        if why:
            raise ConfigError(f"param set: {ref} would be {key} under group {item.key} ({item.ref}), which every "
                              f"instance refuses at boot: {why}; pick another parameter name")


def store_for(project: Project, env: Environment) -> Any:
    """The environment's store (LocalStore or AwsStore); aws fails clearly (exit 2) without a region."""
    if env.target == "aws":
        from bakery.params.aws_store import AwsStore

        return AwsStore.for_environment(project, env)
    return LocalStore(local_root(project.state_dir, env.name))


def _covers(used: names.Reference, given: names.Reference) -> bool:
    """A reference of the config names the given one: the same parameter or secret, or a group holding it directly."""
    if used.kind != given.kind or (used.region, used.account) != (given.region, given.account):
        return False  # ssm:/x is not the ARN of /x in another region or account: the instance reads that one
    if used.group:
        return given.name.startswith(used.name) and "/" not in given.name[len(used.name):] and not given.group
    return used.name == given.name


def check_value(ref: names.Reference, value: str, name: str) -> None:
    """What the instance would resolve must pass the runtime value rule (bakery.runtime_grammar) before anything is
    written: the whole value, or for `secretsmanager:NAME#KEY` that key of the JSON object. Never shows the value."""
    where = f"param set {name}"
    if not value:
        raise ConfigError(f"{where}: the value is empty; SSM and Secrets Manager hold no empty values")
    if ref.kind == "secretsmanager" and ref.field is not None:
        import json

        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get(ref.field), (str, int, float, bool)):
            raise ConfigError(f"{where}: the value is not a JSON object with a text or number at key "
                              f"'{runtime_grammar.shown(ref.field)}' ({ref} reads that key)")
        field = data[ref.field]
        value = json.dumps(field) if isinstance(field, bool) else str(field)
    runtime_grammar.validate_value(value, where, "the value")


def listing(store: Any, env: Environment) -> list[dict[str, Any]]:
    """One row per referenced parameter (a group: one per parameter under it, or one MISSING row), no values."""
    rows = []
    for item in references(env):
        members = [names.member(item.ref, n) for n in store.list_group(item.ref)] if item.ref.group else [item.ref]
        for ref in members or [item.ref]:
            record = None if ref.group else store.get(ref)
            rows.append({"key": item.key, "reference": str(ref), "refresh": item.refresh,
                         "type": record and record.get("type"), "version": record and record.get("version"),
                         "modified": record and record.get("modified"), "by": record and record.get("by")})
    return rows
