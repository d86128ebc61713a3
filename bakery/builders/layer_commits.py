"""Commit a layer at each play boundary of the one ansible-playbook run of a local bake.

bakery writes one play per uncached role into a single playbook (Ansible and its plugins load once per bake,
not once per role) and a plan file saying how the build container starts and each layer's cache tag. The
callback plugin bakery_layers (bakery/ansible_plugins/callback) calls `commit_from_plan` when the next play
starts and at the end if the last play succeeded: while ansible-playbook waits, the layer is cleaned,
committed and appended as one JSON line to the records file, which bakery reads as events arrive; then the
next play's container is booted afresh from that layer.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from bakery import podman
from bakery.builders import build_container
from bakery.builders.apt_mounts import CLEAN_BEFORE_COMMIT, AptMounts
from bakery.config import RoleRef
from bakery.errors import OperationError
from bakery.layers import PlannedLayer
from bakery.processes import pid_alive

PLAN_ENV = "BAKERY_LAYER_PLAN"
PLUGINS = Path(__file__).resolve().parent.parent / "ansible_plugins" / "callback"
ANSIBLE_DEFAULT_CALLBACKS = ("~/.ansible/plugins/callback", "/usr/share/ansible/plugins/callback")
# Run before each layer commit so no instance inherits build-time identity or scratch files.
HYGIENE = (
    "truncate -s 0 /etc/machine-id; "
    "rm -rf /tmp/* /tmp/.[!.]* /var/tmp/* /var/tmp/.[!.]* /root/.ansible /root/.cache 2>/dev/null; "
    f"{CLEAN_BEFORE_COMMIT}; "
    "find /var/log/journal -mindepth 1 -delete 2>/dev/null; true"
)


def callback_plugins(project_root: Path) -> str:
    """ANSIBLE_CALLBACK_PLUGINS for the bake: bakery's plugin, then the directories the project's ansible.cfg or
    the caller's environment name (or Ansible's defaults), which setting the variable alone would hide."""
    from ansible.config.manager import ConfigManager  # type: ignore[import-untyped]

    cfg = project_root / "ansible.cfg"
    paths, origin = ConfigManager(str(cfg) if cfg.is_file() else None).get_config_value_and_origin(
        "DEFAULT_CALLBACK_PLUGIN_PATH")
    if origin == "default":
        paths = [os.path.expanduser(path) for path in ANSIBLE_DEFAULT_CALLBACKS]
    return os.pathsep.join([str(PLUGINS), *(str(path) for path in paths)])


def plays(layers: list[PlannedLayer]) -> list[dict[str, Any]]:
    """One play per layer, each around one role, under the layer's own play header.

    Each play starts as a run of its own would, so one cache key always means one layer: it runs in a container
    freshly booted from the layer before it (commit_layer), so no process, runtime file or mitogen interpreter of
    an earlier role is left; it gathers facts as its header says; and the plugin clears every earlier play's host
    state and inventory changes when it starts. The roles' artifact variables are extra vars of the whole run
    (bakery.builders.base), as with Packer and Image Builder.
    """
    return [{**dict(p.layer.play_header), "hosts": "bakery_build", "roles": [p.layer.role.entry]} for p in layers]


def run_segments(layers: list[PlannedLayer]) -> list[list[PlannedLayer]]:
    """The layers as ansible-playbook runs: a role that ships its own plugins (library/, filter_plugins/, ...,
    or one of its dependencies or included roles does) runs alone, since Ansible loads every role's plugins
    for the whole run at its start: in one run, another role would find them (and a clash of names would
    pick the first role's), and its layer would differ from one baked after a cached layer."""
    segments: list[list[PlannedLayer]] = []
    for p in layers:
        if _ships_plugins(p.layer.role) or not segments or _ships_plugins(segments[-1][-1].layer.role):
            segments.append([p])
        else:
            segments[-1].append(p)
    return segments


def _ships_plugins(role: RoleRef, seen: frozenset[Path] = frozenset()) -> bool:
    from ansible.plugins.loader import get_all_plugin_loaders  # type: ignore[import-untyped]

    if role.path in seen:
        return False
    subdirs = {loader.subdir for _, loader in get_all_plugin_loaders() if loader.subdir}
    if any(_has_files(role.path / subdir) for subdir in subdirs):
        return True
    return any(_ships_plugins(other, seen | {role.path}) for other in (*role.dependencies, *role.includes))


def _has_files(directory: Path) -> bool:
    return directory.is_dir() and any(path.is_file() for path in directory.rglob("*"))


def write_plan(path: Path, *, container: list[str], apt_root: Path, records: Path,
               layers: list[tuple[str, str]], inventory: Path | None = None) -> None:
    """The plan the plugin follows: how the build container starts (bakery.builders.build_container.run_args),
    (role, cache ref) per play, in order, and the run's inventory file (pointed at each play's container)."""
    plan = {"container": container, "apt_root": str(apt_root), "records": str(records), "owner": os.getpid(),
            "layers": [{"role": role, "ref": ref} for role, ref in layers],
            "inventory": str(inventory) if inventory else None}
    _write_json(path, plan)


def write_inventory(path: Path, inventory: dict[str, Any]) -> None:
    """The run's inventory as a file of bakery's own, which commit_from_plan rewrites at each container swap."""
    _write_json(path, inventory)


def point_inventory_at(path: Path, address: str) -> None:
    """Every host of the inventory file reaches `address`: a role's `meta: refresh_inventory` re-reads the file,
    and would otherwise send the rest of its play to the first play's container, removed since."""
    inventory = json.loads(path.read_text(encoding="utf-8"))
    for group in inventory["all"]["children"].values():
        for host_vars in group["hosts"].values():
            host_vars["ansible_host"] = address
    _write_json(path, inventory)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    tmp.replace(path)


def commit_from_plan(plan_path: str, index: int) -> dict[str, Any]:
    """Commit play `index`'s layer and record it, then boot the next play's container from it; never raises
    (Ansible would only warn): a failure is an error record, and the one returned is the last one written,
    with the next play's container id under "container" (not written: the plugin points the play at it)."""
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    layers, records = plan["layers"], Path(plan["records"])
    role = layers[index]["role"] if 0 <= index < len(layers) else "?"
    apt = AptMounts(Path(plan["apt_root"]))
    try:
        if role == "?":
            raise OperationError(f"play {index + 1} is not one of the plan's {len(layers)} layers")
        _check_owner(plan)
        record = commit_layer(plan["container"], layers[index]["ref"], apt)
    except Exception as exc:  # noqa: BLE001 - anything that stops a commit is reported to bakery as data
        record = {"error": f"layer commit failed: {' '.join(str(exc).split())[:500]}"}
    record = {"index": index, "role": role, **record}
    append_record(records, record)  # the layer is cached whatever happens next
    if "error" in record or index == len(layers) - 1:
        return record
    try:
        _check_owner(plan)
        container_id = next_container(plan["container"], record["image_id"] or record["ref"], apt)
    except Exception as exc:  # noqa: BLE001 - reported as the next play's failure
        return _next_play_failed(records, index + 1, layers, f"no build container from the layer of '{role}'", exc)
    try:
        if plan.get("inventory"):
            point_inventory_at(Path(plan["inventory"]), container_id)
    except Exception as exc:  # noqa: BLE001 - reported as the next play's failure
        return _next_play_failed(records, index + 1, layers, "the run's inventory could not name its container", exc)
    return {**record, "container": container_id}


def _next_play_failed(records: Path, index: int, layers: list[dict[str, Any]], what: str,
                      exc: Exception) -> dict[str, Any]:
    record = {"index": index, "role": layers[index]["role"], "error": f"{what}: {' '.join(str(exc).split())[:500]}"}
    append_record(records, record)
    return record


def _check_owner(plan: dict[str, Any]) -> None:
    if not pid_alive(plan["owner"]):  # killed (-9): its gc removes the container; nothing new to start or commit
        raise OperationError(f"bakery (pid {plan['owner']}) is gone")


def commit_layer(container: list[str], ref: str, apt: AptMounts) -> dict[str, Any]:
    """The commit of one layer, exactly as when each role had its own run."""
    started = time.monotonic()
    name = build_container.name(container)
    apt.keep()
    podman.run("exec", name, "sh", "-c", HYGIENE, check=False)
    printed = podman.run("commit", "-q", name, ref, timeout=900).stdout.split()
    # The id the commit printed, not the tag read back: another checkout committing the same key in between would
    # move the tag to its own image, and this catalog would record (and later gc) that one.
    image_id = (f"sha256:{printed[-1]}" if printed and re.fullmatch(r"[0-9a-f]{64}", printed[-1])
                else podman.image_id(ref) or "")
    return {"ref": ref, "image_id": image_id, "seconds": round(time.monotonic() - started, 3)}


def next_container(container: list[str], layer: str, apt: AptMounts) -> str:
    """The next role's container, by id: a fresh one booted from `layer` (bakery.builders.build_container),
    with the package lists it would find after a boot from that layer."""
    container_id = build_container.replace(container, layer)
    if not apt.refresh_if_sources_changed(build_container.name(container)):
        apt.restore_if_emptied()
    return container_id


def append_record(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records so far (a line still being written is left for the next read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]
