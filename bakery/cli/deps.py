"""bake.py deps: install requirements.yml's community roles and collections into .bakery/galaxy and lock them.

Only click and bakery.cli.common at load time; the library (bakery.deps) is imported when the command runs.
"""

from __future__ import annotations

import click

from bakery.cli.common import emit_json


@click.command("deps")
@click.option("--check", is_flag=True, help="Change nothing: list what is missing or differs from "
              "requirements.lock (exit 1 if anything does).")
@click.option("--update", "update", multiple=True, metavar="NAME",
              help="Resolve NAME afresh from requirements.yml (a newer commit, tag or version), reinstall and "
                   "re-lock it. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def deps(obj, check: bool, update: tuple[str, ...], as_json: bool) -> None:
    """Install the roles and collections of requirements.yml as requirements.lock pins them, locking new ones.

    Nothing is downloaded when everything installed matches the lock. Commit requirements.lock; bakes stop when
    what is installed differs from it. Waits for running bakes to finish first.

    Example: ./bake.py deps --update geerlingguy.nginx
    """
    from bakery.errors import ConfigError

    if check and update:
        raise ConfigError("deps: --check changes nothing and --update changes the lock; give one of them")
    if check:
        _check(obj.project.root, as_json)
        return
    from bakery.deps.sync import sync

    outcome = sync(obj.project.root, update,
                   on_wait=lambda: click.echo("deps: waiting for a bake to finish (it holds .bakery/galaxy)", err=True))
    if as_json:
        emit_json({"installed": outcome.installed, "removed": outcome.removed, "unchanged": outcome.unchanged,
                   "lock_written": outcome.lock_written})
        return
    for name, version in sorted(outcome.installed.items()):
        click.echo(f"installed {name} {version}")
    for line in outcome.removal_lines():
        click.echo(line)
    total = len(outcome.installed) + len(outcome.unchanged)
    if not total and not outcome.removed and not (obj.project.root / "requirements.yml").is_file():
        click.echo("requirements: no requirements.yml, nothing to install")
        return
    click.echo(f"requirements: {total} installed as locked ({len(outcome.unchanged)} unchanged)"
               + ("; requirements.lock written: commit it" if outcome.lock_written else ""))


def _check(root, as_json: bool) -> None:
    from bakery.deps.gate import problems
    from bakery.deps.lock import read_lock
    from bakery.deps.requirements import load_requirements
    from bakery.errors import OperationError

    found = problems(root)
    reqs = load_requirements(root)
    if as_json:
        emit_json({"ok": not found, "problems": [{"name": p.name, "kind": p.kind, "message": p.message}
                                                 for p in found]})
    else:
        for problem in found:
            click.echo(problem.message)
    if found:
        raise OperationError(f"requirements: {len(found)} problem{'s' if len(found) != 1 else ''}; run: bake.py deps")
    if not as_json:
        if reqs is None:
            click.echo("requirements: no requirements.yml, nothing to install")
            return
        lock = read_lock(root)
        roles, collections = (len(lock.roles), len(lock.collections)) if lock else (0, 0)
        click.echo(f"requirements: {roles} roles, {collections} collections, all installed as locked")
