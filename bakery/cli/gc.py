"""bake.py gc: the CLI edge of bakery.gc (options, checks, rendering); the library decides what goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from bakery.cli.common import Context, emit_json, pass_ctx
from bakery.errors import ConfigError

if TYPE_CHECKING:
    from bakery.gc.aws import AwsGcReport
    from bakery.gc.local import LocalGcReport


@click.command()
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="Clean podman and .bakery/ (local), or AMIs and snapshots in every configured region (aws).")
@click.option("--keep", type=int, metavar="N",
              help="Also remove image versions older than the newest N of each image, except any in use or an "
                   "environment's rollback target, and the cached layers only they were built on (required on aws).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed, and why the rest is kept.")
@click.option("--include-shared", is_flag=True,
              help="aws: also delete old AMIs other accounts may launch (by default they stay: gc cannot see what "
                   "those accounts run).")
@click.option("--orphans", "with_orphans", is_flag=True,
              help="local: also remove the images (versions and cached layers) baked on this host that no "
                   "checkout's catalog lists any more, e.g. those of deleted CI clones.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def gc(obj: Context, target: str, keep: int | None, dry_run: bool, include_shared: bool, with_orphans: bool,
       as_json: bool) -> None:
    """Remove what dead bakes left behind; with --keep N, old image versions, their snapshots and stale artifacts too.

    Example: ./bake.py gc --keep 3 --dry-run; on a CI runner: ./bake.py gc --orphans
    """
    if keep is not None and keep < 1:
        raise ConfigError(f"gc --keep must be at least 1, got {keep}: the newest N versions of each image always stay")
    if target == "aws":
        if with_orphans:
            raise ConfigError("gc --orphans removes podman images of this host: use it with --target local")
        _gc_aws(obj, keep, dry_run, include_shared, as_json)
        return
    from bakery import podman
    from bakery.gc.local import collect_local

    podman.check_working()
    report = collect_local(obj.project, obj.catalog, keep, dry_run, with_orphans)
    _render(report, as_json)


def _gc_aws(obj: Context, keep: int | None, dry_run: bool, include_shared: bool, as_json: bool) -> None:
    from bakery.aws.clients import check_credentials
    from bakery.gc.aws import collect_aws
    from bakery.progress import make_progress

    if keep is None:
        raise ConfigError("gc --target aws deregisters AMIs older than the newest N versions of each image: "
                          "give --keep N (e.g. --keep 3)")
    check_credentials()
    progress = make_progress(quiet=as_json)
    try:
        report = collect_aws(obj.project, keep, progress, dry_run=dry_run, include_shared=include_shared)
    finally:
        progress.close()
    _render(report, as_json)


def _render(report: LocalGcReport | AwsGcReport, as_json: bool) -> None:
    """Both targets' reports print the same way; a deletion that failed makes the command fail after printing."""
    if as_json:
        emit_json(report.to_dict())
    else:
        for line in report.lines():
            click.echo(line)
    report.raise_for_failures()
