"""The build container of a local bake: started from a layer and booted with systemd.

A bake starts one from the newest cached layer for its first uncached role, and after each layer commit the
next role gets a fresh one from the layer just committed (bakery.builders.layer_commits), exactly as a bake
whose earlier layers were cached would start it: each play sees only what its parent layer holds (no process,
/run or /tmp content of the role before it), and each commit holds only its own role's changes, not everything
changed since the first role started (`podman commit` copies the container's whole writable layer).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from bakery import podman
from bakery.errors import OperationError
from bakery.processes import command_lines

log = logging.getLogger("bakery.build")

BOOT_TIMEOUT = 90


def run_args(name: str, hostname: str, labels: dict[str, str], volumes: list[str]) -> list[str]:
    """The `podman run` arguments before the image, the same for every container of one bake."""
    args = ["run", "-d", "--name", name, "--hostname", hostname, "--systemd=always"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    return [*args, *volumes]


def name(args: list[str]) -> str:
    return args[args.index("--name") + 1]


def start(args: list[str], from_ref: str, check_cancel: Callable[[], None] = lambda: None) -> str:
    """Start the container `args` describe from `from_ref` and wait until systemd has booted it; its id."""
    printed = podman.run(*args, from_ref, "/sbin/init").stdout.split()
    container_id = printed[-1] if printed else ""
    if not re.fullmatch(r"[0-9a-f]{64}", container_id):
        raise OperationError(f"'podman run' of build container {name(args)} printed no container id "
                             f"(last word: '{container_id[:80]}')")
    check_cancel()
    state = podman.systemd_state(name(args), BOOT_TIMEOUT) or "unknown"
    check_cancel()
    if state == "degraded":
        failed = podman.run("exec", name(args), "systemctl", "--failed", "--no-legend", "--plain", check=False)
        log.warning("build container is degraded: %s", " ".join(failed.stdout.split()))
    elif state != "running":
        raise OperationError(f"build container {name(args)} did not boot: systemd is '{state}' after "
                             f"{BOOT_TIMEOUT} s")
    return container_id


def replace(args: list[str], from_ref: str) -> str:
    """The next role's container, under the same name, from the layer just committed; its id.

    Ansible reaches the build container by its id (`ansible_host`, set per play by the bakery_layers plugin),
    never by its name: mitogen keys its connection by that address, and a name the next container reuses could
    hand the next play the removed container's dead connection (a bake hung for 18 min in the first task after
    a swap). Waiting for the old `podman exec` clients to end also frees their interpreter before the next boot.
    """
    old_id = podman.run("inspect", "--format", "{{.Id}}", name(args), check=False).stdout.strip()
    podman.remove_container(name(args))
    _wait_for_exec_clients(name(args), old_id)
    return start(args, from_ref)


def _wait_for_exec_clients(*container: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (clients := exec_clients(*container)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if clients:
        log.warning("podman exec into %s still running after its removal: pids %s", container[0], clients)


def exec_clients(*container: str) -> list[int]:
    """The host's `podman exec` processes into the container known by any of these names or ids (mitogen's
    connection among them: Ansible reaches a build container by its id)."""
    wanted = {each.encode() for each in container if each}
    found = []
    for pid, cmdline in command_lines():
        argv = cmdline.split(b"\0")
        if len(argv) > 2 and argv[0].endswith(b"podman") and b"exec" in argv and wanted.intersection(argv):
            found.append(pid)
    return found
