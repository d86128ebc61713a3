"""bake.py images and show: reading the catalog (local) or AMI tags and SSM releases (aws)."""

from __future__ import annotations

import click

from bakery.cli.common import Context, emit_json, parse_image_ref, pass_ctx


@click.command()
@click.argument("image", required=False)
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="Read the local catalog, or AMI tags and SSM release parameters in the home region (aws).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def images(obj: Context, image: str | None, target: str, as_json: bool) -> None:
    """List image versions, newest first (on aws: with the environments that run each).

    Example: ./bake.py images webapp --target aws
    """
    if image is not None:
        obj.project.image(image)  # unknown (and empty) names fail clearly
    if target == "aws":
        _images_aws(obj, image, as_json)
        return
    rows = obj.catalog.versions(image, status=None)
    if as_json:
        emit_json([{k: r[k] for k in ("image", "version", "status", "created", "git_commit", "image_ref")}
                   for r in rows])
        return
    if not rows:
        click.echo("no image versions yet; bake one with: ./bake.py build IMAGE")
        return
    click.echo(f"{'IMAGE':<20} {'VERSION':<14} {'CREATED':<21} {'COMMIT':<12} STATUS")
    for r in rows:
        click.echo(f"{r['image']:<20} {r['version']:<14} {r['created']:<21} {(r['git_commit'] or '-')[:12]:<12} "
                   f"{r['status']}")


def _images_aws(obj: Context, image: str | None, as_json: bool) -> None:
    from bakery.aws.catalog_read import aws_images, environment_regions
    from bakery.aws.clients import check_credentials

    check_credentials()
    data = aws_images(obj.project.aws, image, environment_regions(obj.project))
    if as_json:
        emit_json(data)
        return
    if not data["versions"]:
        click.echo(f"no AMIs tagged bakery:managed=true in {data['region']}; "
                   "bake one with: ./bake.py build IMAGE --target aws")
    else:
        click.echo(f"{'IMAGE':<20} {'VERSION':<14} {'AMI':<22} {'CREATED':<25} {'COMMIT':<12} ENVIRONMENTS")
    for r in data["versions"]:
        state = "" if r["state"] == "available" else f" ({r['state']})"
        click.echo(f"{r['image']:<20} {r['version']:<14} {r['ami_id']:<22} {r['created']:<25} "
                   f"{(r['git_commit'] or '-')[:12]:<12} {', '.join(r['environments']) or '-'}{state}")
    listed = {r["ami_id"] for r in data["versions"]}
    for release in data["releases"]:
        if release["ami_id"] not in listed:
            click.echo(f"{release['env']} runs {release['image']}:{release['version'] or '?'} "
                       f"({release['ami_id'] or 'no ami-id parameter'}), "
                       f"an AMI not found among the managed AMIs in {data['region']}")


@click.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def show(obj: Context, ref: str, as_json: bool) -> None:
    """Show one version's provenance, per-role layer digests and package changes (default: the newest).

    Package changes are against the version it replaces (the image's previous version); security updates are
    marked when a base made by `base --if-updates` named them.

    Example: ./bake.py show webapp:20261128.001
    """
    name, version = parse_image_ref(ref)
    record = obj.catalog.resolve(name, version, ready_only=False)
    version = record["version"]
    record["verifications"] = obj.catalog.verifications(name, version)
    record["packages"] = obj.catalog.packages(name, version)
    record["package_changes"] = obj.catalog.package_changes(name, version)
    if as_json:
        emit_json(record)
        return
    click.echo(f"{name}:{version}  ({record['status']}, {record['image_ref']})")
    for line in provenance_lines(record.get("provenance") or {}):
        click.echo(line)
    click.echo("  layers:")
    for layer in record["layers"]:
        click.echo(f"    {layer['position'] + 1}. {layer['role']:<20} role {layer['role_digest'][:19]}  "
                   f"layer {layer['layer_key'][:19]}  {'cached' if layer['cached'] else 'baked'}")
    _echo_package_changes(record["package_changes"], name)
    click.echo("  verifications:" if record["verifications"]
               else f"  verifications: none (run: ./bake.py verify {name}:{version})")
    for v in record["verifications"]:
        click.echo(f"    {v['started']}  {'PASSED' if v['passed'] else 'FAILED'}  {v['seconds']:.1f} s  "
                   f"env {v['env'] or '-'}  {v['summary'][:100]}  ({v['reports'].get('junit', '')})")


def provenance_lines(provenance: dict) -> list[str]:
    """One line per fact (roles are the layers below); artifacts and requirements as name=value, like the label."""
    lines = []
    for key, value in provenance.items():
        if key != "roles":
            shown = " ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
            lines.append(f"  {key:<15} {shown}")
    return lines


def package_change_lines(changes: dict) -> list[str]:
    """One line per package: security updates first, then changed, added and removed packages by name."""
    mark = {True: " [security]", False: ""}
    changed = [(not c["security"], f"{n} {c['old']} -> {c['new']}{mark[c['security']]}")
               for n, c in changes["changed"].items()]
    added = [(not a["security"], f"{n} (new) {a['version']}{mark[a['security']]}") for n, a in changes["added"].items()]
    removed = [(True, f"{n} {v} (removed)") for n, v in changes["removed"].items()]
    return [text for _, text in sorted(changed, key=lambda c: c[0]) + sorted(added, key=lambda a: a[0]) + removed]


def _echo_package_changes(changes: dict, name: str) -> None:
    if changes["note"]:
        click.echo(f"  packages: {changes['note']}")
        return
    lines = package_change_lines(changes)
    security = sum(1 for c in [*changes["changed"].values(), *changes["added"].values()] if c["security"])
    click.echo(f"  packages against {name}:{changes['previous']}: {len(changes['changed'])} changed "
               f"({security} security), {len(changes['added'])} added, {len(changes['removed'])} removed")
    for line in lines:
        click.echo(f"    {line}")
