"""bake.py's observe commands: logs and top (seeing inside a fleet without signing in to an instance).

bakery.cli adds COMMANDS to its root group. Only click and the standard library are imported
here at load time (the library is imported inside each command).
"""

from __future__ import annotations

import json

import click

from bakery.cli.common import check_unit, emit_json, load_env


@click.command()
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--unit", metavar="UNIT", help="Only this systemd unit's lines (webapp means webapp.service).")
@click.option("--since", default="10m", show_default=True, metavar="WHEN",
              help="A duration back from now (30s, 10m, 2h, 1d) or an ISO time.")
@click.option("--grep", metavar="TEXT", help="Only lines whose message contains TEXT (case-sensitive).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line (time, instance, version, source, message, ...).")
@click.pass_obj
def logs(obj, env_name: str, unit: str | None, since: str, grep: str | None, follow: bool, as_json: bool) -> None:
    """The journals of every instance of ENV, merged in time order, each line prefixed with instance and image version.

    Replaced instances' lines stay available for a retention window (local: 24 h).

    Example: ./bake.py logs --env dev --unit webapp --since 5m
    """
    from bakery.observe import logs as library
    from bakery.observe.since import parse_since
    from bakery.observe.targets import log_source

    query = library.LogQuery(since=parse_since(since), unit=check_unit(unit) if unit is not None else None,
                             grep=grep or None)
    env = load_env(obj, env_name)
    source = log_source(obj.project, obj.catalog, env)

    def emit(line) -> None:
        click.echo(json.dumps(line.to_dict(), sort_keys=True) if as_json else line.text())

    if not follow:
        lines = library.collect(source, query)
        for line in lines:
            emit(line)
        if not lines and not as_json:
            click.echo(f"no log lines in {env_name} since {query.since.isoformat(timespec='seconds')}"
                       + (f" for unit {query.unit_name}" if unit else "")
                       + (f" containing '{grep}'" if grep else ""), err=True)
        return
    try:
        library.follow(source, query, emit)
    except KeyboardInterrupt:
        return  # Ctrl-C is how --follow ends: exit 0, no traceback


@click.command()
@click.option("--env", "env_name", required=True, metavar="ENV", help="The environment (inventories/ENV).")
@click.option("--unit", default="webapp", show_default=True, metavar="UNIT",
              help="The watched process: a systemd unit's main process.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.pass_obj
def top(obj, env_name: str, unit: str, as_json: bool) -> None:
    """Per instance of ENV: the watched process's CPU, memory, restarts, uptime, open files, and load-balancer health.

    Example: ./bake.py top --env dev
    """
    from bakery.observe.targets import process_rows
    from bakery.observe.top import table

    check_unit(unit)
    env = load_env(obj, env_name)
    rows = process_rows(obj.project, obj.catalog, env, unit)
    if as_json:
        emit_json({"env": env.name, "target": env.target, "unit": unit, "instances": [r.to_dict() for r in rows]})
    elif not rows:
        click.echo(f"{env.name}: no instances (the environment is down)")
    else:
        click.echo(table(rows))


COMMANDS: tuple[click.Command, ...] = (logs, top)

