"""Where `logs` and `top` read an environment from: its target's log source and process rows."""

from __future__ import annotations

from bakery.catalog import Catalog
from bakery.config import Project
from bakery.environments import Environment
from bakery.observe.logs import LogSource
from bakery.observe.top import ProcessRow


def _local_fleet(project: Project, catalog: Catalog, env: Environment):
    from bakery.fleets import get_fleet
    from bakery.progress import make_progress

    return get_fleet("local")(project, catalog, env, make_progress(quiet=True))


def exports_dir(project: Project, env: Environment):
    return project.state_dir / "envs" / env.name / "journals"


def log_source(project: Project, catalog: Catalog, env: Environment) -> LogSource:
    if env.target == "aws":
        from bakery.observe.cloudwatch import CloudWatchLogs

        return CloudWatchLogs(project, env)
    from bakery import podman
    from bakery.observe.journals import Instance, LocalJournals

    podman.check_working()
    fleet = _local_fleet(project, catalog, env)
    return LocalJournals(lambda: [Instance(m.name, m.version or "?", m.running) for m in fleet.observe()],
                         exports_dir(project, env))


def process_rows(project: Project, catalog: Catalog, env: Environment, unit: str) -> list[ProcessRow]:
    if env.target == "aws":
        from bakery.observe.cloudwatch import aws_top

        return aws_top(project, env, unit)
    from bakery import podman
    from bakery.observe.top import local_top

    podman.check_working()
    return local_top(_local_fleet(project, catalog, env).status(), unit)
