"""bake.py iam-policy: print the least-privilege IAM policy for the role that runs bake.py on AWS.

Rendered from the project's `aws:` settings (bakery.aws.iam_policy), so it names
this project's bucket, roles, subnet, accounts and log groups instead of wildcards;
`--for imagebuilder-instance` prints the Image Builder build instance role's
policy instead (it refuses --env, --no-build and --account rather than ignore them);
`--for instance --env ENV` the read policy of an aws environment's instance role: the
parameters and secrets its runtime config references (bakery.aws.iam_policy_params).
The CI role may `bake.py param` exactly the references of the project's aws environments.
Bad --env values and settings are refused before STS is asked for the account. One
CI role per environment: `--env qa` (repeatable) renders deploy permissions for those
environments only, and `--no-build` leaves the bake out (the role that only promotes
to prod). A policy over a managed policy's size limit (6,144 characters) gets one
line on stderr: attach it inline (a role's inline policies may have 10,240; a test
keeps a larger project's policy under that with room), or as the managed policies
`--part 1`, `--part 2`, ... print (ci/aws/codepipeline.yaml attaches managed policies).
Only click and the standard library at load time.
"""

from __future__ import annotations

import click

from bakery.cli.common import emit_json

ROLES = ("ci", "imagebuilder-instance", "instance")


@click.command("iam-policy")
@click.option("--account", metavar="ID",
              help="The 12-digit account the role lives in (default: the caller's, from sts get-caller-identity).")
@click.option("--settings", "settings_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Render from this YAML file's `aws:` mapping instead of bakery.yml's "
                   "(e.g. docs/aws-iam-policy.example.yml).")
@click.option("--for", "role", type=click.Choice(ROLES), default="ci", show_default=True,
              help="ci: the role that runs bake.py; imagebuilder-instance: the role in aws.instance_profile that "
                   "Image Builder's build instances use (besides two AWS managed policies; docs/aws.md); instance: "
                   "the read policy of --env's instance role for the parameters its runtime config references.")
@click.option("--env", "envs", multiple=True, metavar="ENV",
              help="Deploy permissions only for this environment (repeatable): its groups and launch templates by "
                   "their bakery:environment tag, its instance role (aws.instance_roles as a mapping), its release "
                   "parameters and log groups. Default: every environment.")
@click.option("--no-build", "no_build", is_flag=True,
              help="Leave out baking, distributing and gc: for a role that only deploys or promotes.")
@click.option("--part", type=click.IntRange(1), metavar="N",
              help="Print only part N of the policy split into managed policies of at most 6,144 characters each "
                   "(IAM's limit for one; stderr says how many parts there are).")
@click.pass_obj
def iam_policy(obj, account: str | None, settings_file: str | None, role: str, envs: tuple[str, ...],
               no_build: bool, part: int | None) -> None:
    """Print the IAM policy (JSON) that lets bake.py do what it does on AWS, and nothing more.

    Example: ./bake.py iam-policy --env qa > qa-role.json; ./bake.py iam-policy --env prod --no-build > prod-role.json
    """
    from bakery.aws import iam_policy as renderer
    from bakery.aws.iam_policy import render_instance_role_policy, render_policy, size_note, split_policy
    from bakery.errors import ConfigError

    if role == "imagebuilder-instance":
        ignored = [flag for flag, given in (("--env", envs), ("--no-build", no_build), ("--account", account))
                   if given]
        if ignored:
            raise ConfigError(f"--for imagebuilder-instance does not take {', '.join(ignored)}: the build "
                              "instance role's policy has no environments, bake or account; leave them out")
    from bakery.aws.settings import ACCOUNT_RE

    if account is not None and not ACCOUNT_RE.match(account):  # before the settings: the flag is the first mistake
        raise ConfigError(f"--account '{account}' is not a 12-digit AWS account id")
    if role == "instance" and (len(envs) != 1 or no_build):
        raise ConfigError("--for instance takes one --env (the environment whose instance role it is) and no "
                          "--no-build")
    settings = _settings_from(settings_file) if settings_file else obj.project.aws
    try:
        if role == "imagebuilder-instance":  # S3 ARNs name no account: no STS call
            policy = render_instance_role_policy(settings)
        elif role == "instance":
            from bakery.aws.iam_policy_params import render_instance_read_policy

            references = _references(obj, envs, required=True)[envs[0]]
            policy = render_instance_read_policy(envs[0], references, account or _caller_account(settings.region))
        else:
            renderer.check_request(settings, envs=envs, build=not no_build)  # before STS: also without credentials
            parameters = _references(obj, envs)
            volumes = None if settings_file else _data_volume_envs(obj, envs)  # --settings: the example, all
            policy = render_policy(settings, account or _caller_account(settings.region), envs=envs,
                                   build=not no_build, parameters=parameters, data_volumes=volumes)
    except ConfigError as exc:  # the renderer names bakery.yml; with --settings the fields are that file's
        if settings_file and str(exc).startswith("bakery.yml:"):
            raise ConfigError(settings_file + str(exc)[len("bakery.yml"):]) from exc
        raise
    if part is None:
        emit_json(policy)
        note = size_note(policy)
        if note:
            click.echo(f"bake.py iam-policy: {note}", err=True)
        return
    parts = split_policy(policy)
    if part > len(parts):
        raise ConfigError(f"--part {part}: the policy has {len(parts)} part(s)")
    emit_json(parts[part - 1])
    click.echo(f"bake.py iam-policy: part {part} of {len(parts)}", err=True)


def _references(obj, envs: tuple[str, ...], required: bool = False) -> dict[str, list[str]]:
    """The references of the project's aws environments (of `envs` when given): what `bake.py param` may touch and
    their instance roles read. required: each of `envs` must be an aws environment of the project."""
    from bakery.environments import environment_names, load_environment
    from bakery.errors import ConfigError
    from bakery.params.service import references

    try:
        project = obj.project
    except ConfigError:  # --settings outside a project: no environments, no parameters
        if required:
            raise
        return {}
    known = environment_names(project)
    found: dict[str, list[str]] = {}
    for name in envs or known:
        if name not in known:
            if required:
                raise ConfigError(f"--env '{name}': the project has no such environment (known: "
                                  f"{', '.join(known) or 'none'})")
            continue
        env = load_environment(project, name, check_promotion=False)
        if env.target != "aws":
            if required:
                raise ConfigError(f"--env '{name}' is on the local target: its instances read the local parameter "
                                  "store (.bakery/params), no IAM role")
            continue
        found[name] = [str(r.ref) for r in references(env)]
    return found


def _data_volume_envs(obj, envs: tuple[str, ...]) -> list[str]:
    """The project's aws environments (of `envs` when given) with a data volume: only their roles may create,
    attach, detach and stop for a hand-over."""
    from bakery.environments import environment_names, load_environment

    project = obj.project
    names = [n for n in envs or environment_names(project) if n in environment_names(project)]
    loaded = (load_environment(project, name, check_promotion=False) for name in names)
    return [env.name for env in loaded if env.target == "aws" and env.data_volume is not None]


def _settings_from(path: str):
    from pathlib import Path

    import yaml

    from bakery.aws.settings import load_aws_settings
    from bakery.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML ({exc})") from exc
    if not isinstance(data, dict) or "aws" not in data:
        raise ConfigError(f"{path}: needs an `aws:` mapping like bakery.yml's")
    return load_aws_settings(data["aws"], path)


def _caller_account(region: str) -> str:
    """The account of the credentials in use (GetCallerIdentity needs no permission)."""
    from bakery.aws import clients

    clients.check_credentials()
    return clients.client("sts", region or None).get_caller_identity()["Account"]


COMMANDS = (iam_policy,)
