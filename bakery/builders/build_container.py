"""The build container of a local bake: started from a layer and booted with systemd.

A bake starts one from the newest cached layer for its first uncached role, and after each layer commit the
next role gets a fresh one from the layer just committed (bakery.builders.layer_commits), exactly as a bake
whose earlier layers were cached would start it: each play sees only what its parent layer holds (no process,
/run or /tmp content of the role before it), and each commit holds only its own role's changes, not everything
changed since the first role started (`podman commit` copies the container's whole writable layer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bakery import podman
from bakery.errors import OperationError

log = logging.getLogger("bakery.build")

BOOT_TIMEOUT = 90


def run_args(name: str, hostname: str, labels: dict[str, str], volumes: list[str]) -> list[str]:
    """The `podman run` arguments before the image, the same for every container of one bake."""
    args = ["run", "-d", "--name", name, "--hostname", hostname, "--systemd=always"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    return [*args, *volumes]


def start(args: list[str], from_ref: str, check_cancel: Callable[[], None] = lambda: None) -> None:
    """Start the container `args` describe from `from_ref` and wait until systemd has booted it."""
    name = args[args.index("--name") + 1]
    podman.run(*args, from_ref, "/sbin/init")
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = "unknown"
    while time.monotonic() < deadline:
        check_cancel()
        proc = podman.run("exec", name, "systemctl", "is-system-running", check=False, timeout=30)
        state = proc.stdout.strip() or "unknown"
        if state in ("running", "degraded"):
            if state == "degraded":
                failed = podman.run("exec", name, "systemctl", "--failed", "--no-legend", "--plain", check=False)
                log.warning("build container is degraded: %s", " ".join(failed.stdout.split()))
            return
        time.sleep(0.1)
    raise OperationError(f"build container {name} did not boot: systemd is '{state}' after {BOOT_TIMEOUT} s")


def replace(args: list[str], from_ref: str) -> None:
    """The next role's container, under the same name (the run's inventory host), from the layer just committed."""
    podman.remove_container(args[args.index("--name") + 1])
    start(args, from_ref)
