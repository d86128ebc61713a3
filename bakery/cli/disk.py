"""bake.py disk: a version's bootable disk (GPT, UEFI), the bytes verify --vm boots and EC2 will run."""

from __future__ import annotations

import click

from bakery.cli.common import Context, emit_json, parse_image_ref, pass_ctx


@click.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--format", "disk_format", type=click.Choice(["raw", "qcow2"]), default="raw", show_default=True,
              help="raw (what is published as an AMI) or qcow2 (compact, for local VMs).")
@click.option("--size", metavar="SIZE", help="Size of the whole disk, e.g. 4G (default: the smallest whole GiB that "
              "holds it; the root filesystem grows into a larger volume at first boot).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def disk(obj: Context, ref: str, disk_format: str, size: str | None, as_json: bool) -> None:
    """Build (or find) the bootable disk of an image version (default: the newest).

    Reproducible: the same version gives the same bytes. Cached: a second call returns at once.

    Example: ./bake.py disk webapp --format qcow2
    """
    from bakery.disks.builder import make_disk
    from bakery.disks.layout import parse_size
    from bakery.progress import make_progress

    name, version = parse_image_ref(ref)
    definition = obj.project.image(name)
    size_bytes = parse_size(size, "--size") if size is not None else definition.disk.disk_size
    record = obj.catalog.resolve(name, version)
    progress = make_progress(quiet=as_json)
    try:
        result = make_disk(obj.project, obj.catalog, progress, record, definition.disk, disk_format, size_bytes)
    finally:
        progress.close()
    if as_json:
        emit_json(result.to_dict())
        return
    how = "cached" if result.cached else f"built in {result.seconds:.1f} s"
    click.echo(f"{name}:{result.version} {result.format} disk {result.path} ({how})")
    click.echo(f"  sha256 {result.sha256}; {result.bytes / 2**30:.2f} GiB, "
               f"{result.allocated / 2**20:.0f} MiB allocated")
