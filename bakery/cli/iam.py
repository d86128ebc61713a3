"""bake.py iam-policy: print the least-privilege IAM policy for the role that runs bake.py on AWS.

Rendered from the project's `aws:` settings (bakery.aws.iam_policy), so it names
this project's bucket, roles, subnet, accounts and log groups instead of wildcards.
Only click and the standard library at load time.
"""

from __future__ import annotations

import click

from bakery.cli.common import emit_json


@click.command("iam-policy")
@click.option("--account", metavar="ID",
              help="The 12-digit account the role lives in (default: the caller's, from sts get-caller-identity).")
@click.option("--settings", "settings_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Render from this YAML file's `aws:` mapping instead of bakery.yml's "
                   "(e.g. docs/aws-iam-policy.example.yml).")
@click.pass_obj
def iam_policy(obj, account: str | None, settings_file: str | None) -> None:
    """Print the IAM policy (JSON) that lets bake.py do what it does on AWS, and nothing more.

    Example: ./bake.py iam-policy --account 123456789012 > policy.json
    """
    from bakery.aws.iam_policy import render_policy

    settings = _settings_from(settings_file) if settings_file else obj.project.aws
    emit_json(render_policy(settings, account or _caller_account(settings.region)))


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
