"""What every command module shares: the lazy project/catalog context, JSON output, IMAGE[:VERSION] parsing and the
refresh-preference flags. Only click and the standard library at load time, so `bake.py --help` stays instant."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the library is imported only when a command needs it
    from bakery.catalog import SqliteCatalog
    from bakery.config import Project


class Context:
    def __init__(self, project: str | None, debug: bool):
        self._project_arg = project
        self.debug = debug
        self._project: Project | None = None
        self._catalog: SqliteCatalog | None = None

    @property
    def project(self) -> Project:
        if self._project is None:
            from bakery.config import Project

            self._project = Project.discover(self._project_arg)
        return self._project

    @property
    def catalog(self) -> SqliteCatalog:
        if self._catalog is None:
            from bakery.catalog import open_catalog

            self._catalog = open_catalog(self.project.state_dir)
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


pass_ctx = click.make_pass_decorator(Context)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


VERSION_RE = re.compile(r"^\d{8}\.\d{3,}\Z")
UNIT_RE = re.compile(r"^[A-Za-z0-9@._:\\-]{1,200}\Z")


def parse_image_ref(value: str) -> tuple[str, str | None]:
    """IMAGE[:VERSION], checked before anything is opened: a bad reference is exit 2 and writes nothing."""
    from bakery.config import NAME_RE
    from bakery.errors import ConfigError

    name, colon, version = value.partition(":")
    if not NAME_RE.match(name):
        raise ConfigError(f"image name '{name}' in '{value}' is invalid: give IMAGE[:VERSION], e.g. webapp or "
                          "webapp:20261128.001 (lower-case letters, digits, '-' and '_')")
    if colon and not VERSION_RE.match(version):
        raise ConfigError(f"version '{version}' in '{value}' is invalid: versions look like 20261128.001; "
                          f"list them with: ./bake.py images {name}")
    return name, (version or None)


def check_unit(value: str) -> str:
    """A systemd unit name (webapp, webapp.service, getty@tty1.service): anything else is refused before a fleet is
    asked."""
    from bakery.errors import ConfigError

    if not UNIT_RE.match(value):
        raise ConfigError(f"--unit '{value}' is not a systemd unit name (letters, digits, '@', '.', '_', ':', '-'), "
                          "e.g. webapp or webapp.service")
    return value


def load_env(obj: Context, name: str):
    """An environment, loaded after a config change a dead bake.py left half done was settled
    (bakery.fleets.config_journal): what the command reads is the runtime.yml the fleet runs."""
    from bakery.environments import load_environment
    from bakery.fleets.config_journal import settle_pending

    env = load_environment(obj.project, name)
    note = settle_pending(obj.project, obj.catalog, env)
    if note:
        click.echo(f"bake.py: {note}", err=True)
        env = load_environment(obj.project, name)
    return env


REFRESH_FLAGS = ("min_healthy_percentage", "max_healthy_percentage", "instance_warmup", "checkpoint_percentages",
                 "checkpoint_delay", "skip_matching", "auto_rollback", "bake_time", "standby_instances",
                 "scale_in_protected_instances")


def refresh_options(func):
    """The environment's refresh preferences, overridable for one rollout."""
    options = [
        click.option("--min-healthy-percentage", type=click.IntRange(0, 100), metavar="PCT",
                     help="Capacity that must stay in service during the refresh (rounded up)."),
        click.option("--max-healthy-percentage", type=click.IntRange(100, 200), metavar="PCT",
                     help="Capacity that may run at once; above 100 launches new instances before old ones go."),
        click.option("--instance-warmup", type=click.IntRange(0, 3600), metavar="SECONDS",
                     help="How long a new instance must stay healthy in service before the refresh moves on."),
        click.option("--checkpoint-percentages", metavar="P,P,...",
                     help="Pause and probe the environment at these percentages, e.g. 50,100."),
        click.option("--checkpoint-delay", type=click.IntRange(0, 172800), metavar="SECONDS",
                     help="Pause at each checkpoint."),
        click.option("--skip-matching/--no-skip-matching", default=None,
                     help="Keep instances already on the target version and config (default from the environment)."),
        click.option("--auto-rollback/--no-auto-rollback", default=None,
                     help="Return to the previous version when the refresh fails."),
        click.option("--bake-time", type=click.IntRange(0, 86400), metavar="SECONDS",
                     help="Watch the environment this long after the last replacement before declaring success."),
        click.option("--standby-instances", type=click.Choice(["Ignore", "Wait", "Terminate"], case_sensitive=False),
                     help="aws: instances in Standby are left (Ignore), waited for up to an hour (Wait) or "
                          "terminated."),
        click.option("--scale-in-protected-instances",
                     type=click.Choice(["Ignore", "Wait", "Refresh"], case_sensitive=False),
                     help="aws: instances protected from scale in are left (Ignore), waited for up to an hour (Wait) "
                          "or replaced (Refresh)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def refresh_overrides(prefs: dict[str, Any]) -> dict[str, Any]:
    from bakery.fleets.planning import parse_percentages

    values = {key: prefs.get(key) for key in REFRESH_FLAGS}
    values["checkpoint_percentages"] = parse_percentages(values["checkpoint_percentages"])
    return values
