"""bake.py param set|get|list: the live values an environment's runtime config gives by reference.

`param set` writes a new version of a parameter (the local store, or SSM / Secrets Manager on aws) and replaces no
instance: the instances re-resolve keys with `refresh:` within their interval, the others at their next launch.
Values are never printed, except by `get --reveal` and for an ssm String. Only click and the standard library at
load time.
"""

from __future__ import annotations

import sys

import click

from bakery.cli.common import emit_json

TYPES = ("String", "SecureString")


def _environment(obj, name: str):
    from bakery.environments import load_environment

    return load_environment(obj.project, name)


@click.group("param")
def param() -> None:
    """Set and read the parameters an environment's runtime config references (ssm:/path, secretsmanager:name)."""


@param.command("set")
@click.argument("name")
@click.argument("value", required=False)
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--type", "kind", type=click.Choice(TYPES), help="ssm only: the parameter's type "
              "(default SecureString; String values are shown by get and list).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def param_set(obj, name: str, value: str | None, env_name: str, kind: str | None, as_json: bool) -> None:
    """Write a new version of NAME (a runtime key whose value is a reference, or the reference) without replacing an
    instance. Without VALUE it is read from stdin, which keeps a secret out of the shell history.

    Example: ./bake.py param set --env qa FEATURE_NEW_CHECKOUT false
    """
    from bakery.errors import ConfigError
    from bakery.params import service

    env = _environment(obj, env_name)
    key, ref = service.resolve_name(env, name)
    if kind and ref.kind != "ssm":
        raise ConfigError(f"param set: --type is for ssm parameters; {ref} is a Secrets Manager secret (always a "
                          "SecretString): leave --type out")
    store = service.store_for(obj.project, env)
    service.check_member(store, env, ref)
    if value is None:
        value = _read_value()
    service.check_value(ref, value, key or str(ref))
    record = store.put(ref, value, kind or ("SecureString" if ref.kind == "ssm" else "SecretString"))
    result = {"env": env.name, "key": key, "reference": str(ref), **_metadata(record)}
    if as_json:
        emit_json(result)
        return
    click.echo(f"{env.name}: {ref} version {record['version']} written ({record['type']}, by {record['by']})"
               + (f"; instances re-resolve {key} within {env.runtime_refresh[key]} s" if key in env.runtime_refresh
                  else "; instances resolve it at their next launch"))


def _read_value() -> str:
    """The value from stdin (one trailing line end dropped); asked for without echo on a terminal."""
    if sys.stdin.isatty():
        return click.prompt("value", hide_input=True, err=True)
    text = sys.stdin.read()
    return text.removesuffix("\n").removesuffix("\r")


def _metadata(record: dict) -> dict:
    return {k: record.get(k) for k in ("name", "type", "version", "modified", "by")}


@param.command("get")
@click.argument("name")
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--reveal", is_flag=True, help="Print the value of a SecureString or secret too.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def param_get(obj, name: str, env_name: str, reveal: bool, as_json: bool) -> None:
    """Show NAME's type, version, when and by whom it was written; its value only for a String or with --reveal.

    Example: ./bake.py param get --env qa FEATURE_NEW_CHECKOUT
    """
    from bakery.errors import OperationError
    from bakery.params import service

    env = _environment(obj, env_name)
    key, ref = service.resolve_name(env, name)
    record = service.store_for(obj.project, env).get(ref, reveal=reveal)
    if record is None:
        raise OperationError(f"{env.name}: {ref} has no value yet; set it with ./bake.py param set --env {env.name} "
                             f"{key or ref}")
    data = {"env": env.name, "key": key, "reference": str(ref), **_metadata(record)}
    if reveal or record.get("type") == "String":
        data["value"] = record.get("value")
    if as_json:
        emit_json(data)
        return
    for field in ("reference", "type", "version", "modified", "by", "value"):
        if field in data:
            click.echo(f"{field}: {data[field]}")


@param.command("list")
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def param_list(obj, env_name: str, as_json: bool) -> None:
    """Every reference in ENV's runtime config: version, when, by whom, refresh; MISSING when it has no value.

    Example: ./bake.py param list --env qa
    """
    from bakery.params import service

    env = _environment(obj, env_name)
    rows = service.listing(service.store_for(obj.project, env), env)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"{env.name}: its runtime config references no parameter")
        return
    click.echo(f"{'KEY':<24} {'REFERENCE':<44} {'VERSION':<8} {'REFRESH':<8} {'MODIFIED':<21} BY")
    for row in rows:
        refresh = f"{row['refresh']}s" if row["refresh"] else "-"
        version = "MISSING" if row["version"] is None else str(row["version"])
        click.echo(f"{row['key']:<24} {row['reference']:<44} {version:<8} {refresh:<8} "
                   f"{row['modified'] or '-':<21} {row['by'] or '-'}")


COMMANDS = (param,)
