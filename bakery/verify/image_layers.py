"""The layers a bake committed, read as the tar streams they are.

The secret scan reads every layer above the base rather than the merged filesystem: a file one role
wrote and a later role deleted is gone from the merged view but still in its layer, and so in every
disk or AMI made from the image. A layer's tar also gives exact names (a newline in a name is just a
character) and whole contents, whatever a role did to sizes and mtimes. `podman save` writes the image
as a docker-archive: one tar holding an uncompressed tar per layer, named by the layer's diff id.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from bakery import podman
from bakery.catalog import Catalog
from bakery.errors import OperationError

SAVE_TIMEOUT = 1800


@dataclass(frozen=True)
class Layer:
    diff_id: str  # sha256:...
    label: str  # what the report calls it: the role that committed it, or its short id


def diff_ids(ref: str) -> list[str]:
    info = podman.image_inspect(ref)
    if info is None:
        raise OperationError(f"{ref} is not in podman's storage")
    return list((info.get("RootFS") or {}).get("Layers") or [])


def layers_above(catalog: Catalog, record: dict[str, Any], base_ref: str) -> list[Layer]:
    """The layers the bake added on top of its base, each named after the role that committed it."""
    image_layers, base_layers = diff_ids(record["image_ref"]), diff_ids(base_ref)
    if image_layers[:len(base_layers)] != base_layers:
        raise OperationError(f"{record['image_ref']} is not built on {base_ref}: its first layers differ")
    added = image_layers[len(base_layers):]
    # Roles baked in one go share one layer (each commit holds everything since the container started);
    # a role whose own commit is not in the image was folded into the next one that is.
    names: dict[str, str] = {}
    folded: list[str] = []
    for position, layer in enumerate(record.get("layers") or [], start=1):
        folded.append(f"{position:02d}-{layer['role']}")
        cached = catalog.layer(layer.get("layer_key") or layer.get("key") or "")
        ref = cached and (cached.get("image_id") or cached.get("ref"))
        committed = diff_ids(ref) if ref and podman.image_exists(ref) else []
        if committed and committed[-1] in added and committed[-1] not in names:
            names[committed[-1]] = folded[0] if len(folded) == 1 else f"{folded[0]}..{folded[-1]}"
            folded = []
    return [Layer(d, names.get(d, "image-metadata" if d == added[-1] else d.removeprefix("sha256:")[:12]))
            for d in added]


def each_layer(ref: str, wanted: list[Layer]) -> Iterator[tuple[Layer, IO[bytes]]]:
    """Every wanted layer of `ref` as a non-seekable tar stream, in the order `podman save` writes them.

    The whole image streams through once (nothing is unpacked to disk); a layer that never came out
    of the archive, or a failed `podman save`, is an error: an unread layer would be an unscanned one.
    """
    by_name = {f"{layer.diff_id.removeprefix('sha256:')}.tar": layer for layer in wanted}
    seen: set[str] = set()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(["podman", "save", "--format", "docker-archive", ref],
                                   stdout=subprocess.PIPE, stderr=errors)
        assert process.stdout is not None
        completed = False
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                for member in archive:
                    layer = by_name.get(member.name)
                    stream = archive.extractfile(member) if layer and member.isfile() else None
                    if layer and stream and layer.diff_id not in seen:
                        seen.add(layer.diff_id)
                        yield layer, stream
            while process.stdout.read(1 << 20):  # the archive's padding: let podman finish writing
                pass
            completed = True
        except tarfile.TarError as error:
            raise OperationError(f"podman save {ref}: unreadable archive ({error})") from error
        finally:
            if not completed and process.poll() is None:
                process.kill()
            process.wait(timeout=SAVE_TIMEOUT)
            process.stdout.close()
        errors.seek(0)
        message = errors.read().decode(errors="replace").strip().splitlines()
    if process.returncode != 0:
        raise OperationError(f"podman save {ref} failed: {message[-1] if message else process.returncode}")
    missing = [layer.label for layer in wanted if layer.diff_id not in seen]
    if missing:
        raise OperationError(f"podman save {ref} did not write the layers {', '.join(missing)}")
