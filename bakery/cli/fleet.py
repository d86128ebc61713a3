"""bake.py's environment commands: deploy, status, rollback, promote, config get|set, down.

bakery.cli adds COMMANDS to its root group. Only click and the standard library are imported
here at load time (the library is imported inside each command), so
`bake.py --help` stays instant and there is no import cycle with bakery.cli.
"""

from __future__ import annotations

from typing import Any

import click

from bakery.cli.common import emit_json, load_env, parse_image_ref, refresh_options, refresh_overrides


def _session(obj, as_json: bool):
    from bakery.fleets.operations import Session
    from bakery.progress import make_progress

    return Session(obj.project, obj.catalog, make_progress(quiet=as_json))


def _run(obj, as_json: bool, operation, *args, **kwargs):
    """Run one fleet operation in a session whose progress display is closed however the operation ends."""
    session = _session(obj, as_json)
    try:
        return operation(session, *args, **kwargs)
    finally:
        session.progress.close()


def _environment(obj, name: str):
    return load_env(obj, name)


def _report_release(result, as_json: bool) -> None:
    from bakery.errors import OperationError

    if as_json:
        emit_json(result.to_dict())
    what = f"{result.kind} of {result.image}:{result.to_version} to {result.env}"
    if result.ok:
        if not as_json:
            where = f"; load balancer {result.endpoint}" if result.endpoint else ""
            click.echo(f"{what} succeeded: {result.replaced} of {result.total} instances replaced "
                       f"in {result.seconds:.1f} s (release #{result.release_id}){where}")
        return
    if result.result == "rolled_back":
        raise OperationError(f"{what} rolled back to {result.from_version} "
                             f"(release #{result.release_id}): {result.reason}")
    raise OperationError(f"{what} failed (release #{result.release_id}): {result.reason}")


@click.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--force", is_flag=True,
              help="Deploy even if the version did not pass verification (recorded in the release).")
@click.option("--replace-running", is_flag=True,
              help="Target aws: cancel an instance refresh already running on the group "
                   "instead of waiting for it to end.")
@click.option("--json", "as_json", is_flag=True, help="Print the release summary as JSON.")
@refresh_options
@click.pass_obj
def deploy(obj, ref: str, env_name: str, force: bool, replace_running: bool, as_json: bool, **prefs) -> None:
    """Roll IMAGE:VERSION out to ENV by a zero-downtime rolling refresh (default: the newest version).

    Exits 1 when the refresh failed or rolled back, naming the failing health check.

    Example: ./bake.py deploy webapp:20261128.002 --env qa
    """
    from bakery.fleets import operations

    env = _environment(obj, env_name)
    image, version = parse_image_ref(ref)
    result = _run(obj, as_json, operations.deploy, env, image, version, overrides=refresh_overrides(prefs), force=force,
                  replace_running=replace_running)
    _report_release(result, as_json)


@click.command()
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def status(obj, env_name: str, as_json: bool) -> None:
    """Show ENV's instances (version, config, health), its load balancer and its last releases.

    A refresh left unfinished by a process that died is finished (or rolled back) first.

    Example: ./bake.py status --env qa
    """
    from bakery.fleets import operations

    env = _environment(obj, env_name)
    data = _run(obj, as_json, operations.status, env)
    if as_json:
        emit_json(data)
        return
    _print_status(data, env)


def _print_status(data: dict[str, Any], env) -> None:
    instances = data["instances"]
    in_service = sum(1 for i in instances if i["in_service"])
    for item in data["resumed"]:
        click.echo(f"finished release #{item['release']} ({item['kind']} to {item['to']}) "
                   f"left unfinished: {item['result']}"
                   + (f" ({item['reason']})" if item.get("reason") else ""))
    if data["state"] == "down":
        click.echo(f"{data['env']}: down (no instances, load balancer stopped); "
                   f"start it with: ./bake.py deploy {env.image}:VERSION --env {data['env']}")
    else:
        if env.target == "aws":  # the group's load balancer is the infrastructure's (docs/aws.md), not bakery's
            lb = f"Auto Scaling group {env.aws['auto_scaling_group']}"
        else:
            lb = f"load balancer {data['endpoint']}" if data["lb_running"] else "load balancer NOT running"
        click.echo(f"{data['env']}: {data['state']} - {in_service} of {data['desired']} instances in service, {lb}")
    if instances and not data["lb_running"] and env.target == "local":
        click.echo(f"  its load balancer ({data['lb_address']}) is not running: "
                   f"the next ./bake.py deploy --env {data['env']} starts it and puts the healthy instances back")
    if data.get("refresh"):
        r = data["refresh"]
        click.echo(f"  refresh in progress: release #{r['release']} "
                   f"({r['kind']} to {r['to']}, phase {r['phase']}, pid {r['pid']})")
    if instances:
        click.echo(f"  {'NAME':<22} {'VERSION':<14} {'CONFIG':<13} {'STATE':<8} "
                   f"{'HEALTH':<10} {'LB':<7} {'ADDRESS':<16} CHECK")
        for i in instances:
            click.echo(f"  {i['name']:<22} {i['version'] or '-':<14} {(i['config_digest'] or '-')[7:19]:<13} "
                       f"{i['state']:<8} {i['health']:<10} {i['lb_state']:<7} {i['address'] or '-':<16} {i['check']}")
            if i.get("params"):  # the versions it resolved (bakery.params.report), never a value
                from bakery.params.report import params_column

                click.echo(f"  {'':<22} parameters: {params_column(i['params'])}")
    _print_volumes(data.get("volumes") or [])
    if data["releases"]:
        click.echo("  last releases:")
        for r in data["releases"]:
            took = f"{r['seconds']:.1f} s" if r["seconds"] is not None else "-"
            line = (f"    #{r['id']:<4} {r['kind']:<8} {r['previous_version'] or '-'} -> {r['version']:<14} "
                    f"{r['status']:<12} {r['started']}  {took:>8}  {r['user']}" + ("  (forced)" if r["forced"] else ""))
            click.echo(line + (f"  {r['reason']}" if r["reason"] and r["status"] != "succeeded" else ""))


def _print_volumes(volumes: list[dict[str, Any]]) -> None:
    """An aws environment's data volumes, one per slot; what needs a look went to stderr already (volume_notes)."""
    if not volumes:
        return
    click.echo(f"  data volumes:\n    {'SLOT':<5} {'VOLUME':<22} {'STATE':<10} {'INSTANCE':<20} {'ZONE':<12} HAND-OVER")
    for v in volumes:
        click.echo(f"    {v['slot']:<5} {v['id']:<22} {v['state']:<10} {v['instance'] or '-':<20} {v['zone']:<12} "
                   f"{v['handover'] or '-'}" + ("  (UNATTACHED)" if v["unattached"] else ""))


@click.command()
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--json", "as_json", is_flag=True, help="Print the release summary as JSON.")
@refresh_options
@click.pass_obj
def rollback(obj, env_name: str, as_json: bool, **prefs) -> None:
    """Return ENV to its previous successful release (version and config) by the same rolling refresh.

    Example: ./bake.py rollback --env qa
    """
    from bakery.fleets import operations

    env = _environment(obj, env_name)
    result = _run(obj, as_json, operations.rollback, env, overrides=refresh_overrides(prefs))
    _report_release(result, as_json)


@click.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--to", "env_name", required=True, metavar="ENV",
              help="The environment to promote to; its promote_from is the source.")
@click.option("--json", "as_json", is_flag=True, help="Print the release summary as JSON.")
@refresh_options
@click.pass_obj
def promote(obj, ref: str, env_name: str, as_json: bool, **prefs) -> None:
    """Deploy the same IMAGE:VERSION (never a rebuild) to ENV, once verified and healthy in ENV's promote_from.

    Without a version, the version running in the source environment.

    Example: ./bake.py promote webapp:20261128.002 --to prod
    """
    from bakery.fleets import operations

    env = _environment(obj, env_name)
    image, version = parse_image_ref(ref)
    result = _run(obj, as_json, operations.promote, env, image, version, overrides=refresh_overrides(prefs))
    _report_release(result, as_json)


@click.group()
def config() -> None:
    """Read or change an environment's runtime config (inventories/ENV/group_vars/all/runtime.yml)."""


@config.command("get")
@click.argument("key", required=False)
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def config_get(obj, key: str | None, env_name: str, as_json: bool) -> None:
    """Print ENV's runtime config (KEY=VALUE lines), or one KEY's value.

    Example: ./bake.py config get --env qa LOG_LEVEL
    """
    from bakery.fleets import operations

    env = _environment(obj, env_name)
    values = operations.config_get(_session(obj, True), env, key)
    if as_json:
        emit_json(values)
    elif key is not None:
        click.echo(values[key])
    else:
        for name, value in values.items():
            click.echo(f"{name}={value}")


@config.command("set")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refresh_options
@click.pass_obj
def config_set(obj, pairs: tuple[str, ...], env_name: str, as_json: bool, **prefs) -> None:
    """Change ENV's runtime config without a rebake: write runtime.yml, then replace every instance (same image) by a
    rolling refresh. The file is written only once every check passed and the rollout starts, and restored when the
    change does not roll out (a change a killed bake.py left is settled by the next command on ENV).

    Example: ./bake.py config set --env qa LOG_LEVEL=debug FEATURE_NEW_CHECKOUT=false
    """
    from bakery.errors import OperationError
    from bakery.fleets import operations

    env = _environment(obj, env_name)
    data = _run(obj, as_json, operations.config_set, env, pairs, overrides=refresh_overrides(prefs))
    if as_json:
        emit_json(data)
    result = data.get("result")
    if result in ("unchanged", "written"):
        if not as_json:
            click.echo(f"{env.name}: runtime config "
                       f"{'unchanged' if result == 'unchanged' else 'written to ' + data['file']}"
                       + ("; the environment is down, it applies at the next deploy" if result == "written" else ""))
        return
    if result != "succeeded":
        raise OperationError(f"config change of {env.name} {'rolled back' if result == 'rolled_back' else 'failed'} "
                             f"(release #{data['release']}), runtime.yml restored: {data['reason']}")
    if not as_json:
        click.echo(f"{env.name}: runtime config {data['config_digest'][7:19]} rolled out: "
                   f"{data['replaced']} of {data['total']} instances replaced in {data['duration']:.1f} s "
                   f"(release #{data['release']})")


@click.command()
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def down(obj, env_name: str, as_json: bool) -> None:
    """Stop ENV (desired capacity 0): drain and remove every instance, stop its load balancer.

    Releases stay in the catalog and data volumes stay in podman.

    Example: ./bake.py down --env dev
    """
    from bakery.fleets import operations

    env = _environment(obj, env_name)
    data = _run(obj, as_json, operations.down, env)
    if as_json:
        emit_json(data)
    elif data["result"] == "already down":
        click.echo(f"{env.name}: already down")
    else:
        click.echo(f"{env.name}: down ({data['removed']} instances removed, load balancer stopped; "
                   f"release #{data['release']})")


COMMANDS = (deploy, status, rollback, promote, config, down)

