"""The local target's instances as podman runs them, apart from the load balancer and the refresh logic.

Every instance is booted like a server (`--systemd=always`, /sbin/init), gets the
runtime config as a read-only file at /etc/bakery/launch/runtime.env (applied at
boot by the image's bakery-runtime-config.service) and the environment's parameter
store read-only at /etc/bakery/params (BAKERY_PARAMS="local": the applier resolves
references there, bakery.params.local_store), publishes its app port on
127.0.0.1 only, and carries labels naming the environment, image version, git
commit and message, and config digest. Its journal is exported before it is
removed, so `bake.py logs` still shows it. http_probe is the direct health check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import time
from pathlib import Path
from typing import Any

from bakery import podman
from bakery.environments import Environment, parse_env_file
from bakery.errors import BakeryError, OperationError
from bakery.files import write_atomically
from bakery.fleets.base import Goal
from bakery.observe.journals import export_journal
from bakery.params.local_store import LocalStore

log = logging.getLogger("bakery.fleet.local")

ENV_LABEL = "io.bakery.env"
PROJECT_LABEL = "io.bakery.project"
INSTANCE_LABEL = "io.bakery.instance"
CONFIG_LABEL = "io.bakery.config"
RELEASE_LABEL = "io.bakery.release"
LAUNCH_FILE = "/etc/bakery/launch/runtime.env"
PARAMS_MOUNT = "/etc/bakery/params"
STOP_TIMEOUT = 30  # podman stop: systemd shuts the services down cleanly within this


def short_digest(digest: str | None) -> str:
    return (digest or "").removeprefix("sha256:")[:12]


def project_id(root: Path) -> str:
    """Instances carry it: two projects on one host may use the same environment names without mixing."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def published_port(container: dict[str, Any], container_port: int) -> int | None:
    """The host port a `podman ps` entry publishes for container_port."""
    for mapping in container.get("Ports") or []:
        if int(mapping.get("container_port", 0)) == container_port and mapping.get("host_port"):
            return int(mapping["host_port"])
    return None


class PodmanInstances:
    """One environment's instances in podman: found by their labels, launched from a goal, stopped and removed."""

    def __init__(self, env: Environment, folder: Path, project: str, params: Path | None = None):
        self.env = env
        self.folder = folder
        self.project_id = project
        self.params = params  # the environment's local parameter store (bakery.params.service.local_root)
        self._ports: dict[str, int] = {}

    def containers(self) -> list[dict[str, Any]]:
        proc = podman.run("ps", "-a", "--filter", f"label={ENV_LABEL}={self.env.name}",
                          "--filter", f"label={PROJECT_LABEL}={self.project_id}",
                          "--filter", f"label={INSTANCE_LABEL}=1", "--format", "json")
        return json.loads(proc.stdout or "[]")

    # ---- what an instance is launched with

    def runtime_file(self, goal: Goal) -> Path:
        """The runtime config of a goal as the env file mounted into its instances (one file per config digest,
        so a rollback can relaunch an older config)."""
        path = self.folder / f"runtime-{short_digest(goal.config_digest)}.env"
        text = dataclasses.replace(self.env, runtime=goal.runtime).runtime_env_text(params="local")
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_atomically(path, text)
        return path

    def known_runtime(self, config_digest: str) -> dict[str, str] | None:
        path = self.folder / f"runtime-{short_digest(config_digest)}.env"
        return parse_env_file(path.read_text(encoding="utf-8")) if path.is_file() else None

    def volume_name(self) -> str | None:
        return f"bakery-{self.env.name}-{self.env.data_volume.name}" if self.env.data_volume else None

    def _ensure_volume(self) -> str | None:
        name = self.volume_name()
        if name and podman.run("volume", "exists", name, check=False).returncode != 0:
            podman.run("volume", "create", "--label", f"{ENV_LABEL}={self.env.name}",
                       "--label", f"{PROJECT_LABEL}={self.project_id}", name)
            log.info("created volume %s", name)
        return name

    def launch(self, goal: Goal, name: str) -> None:
        runtime = self.runtime_file(goal)
        args = ["run", "-d", "--name", name, "--hostname", name, "--systemd=always",
                "-p", f"127.0.0.1::{self.env.health_check.port}",
                "-v", f"{runtime}:{LAUNCH_FILE}:ro",
                "--stop-timeout", str(STOP_TIMEOUT)]
        if self.params is not None:  # made (empty, 0700) when missing: the mount always works
            args += ["-v", f"{LocalStore(self.params).ensure()}:{PARAMS_MOUNT}:ro"]
        volume = self._ensure_volume()
        if volume and self.env.data_volume:
            args += ["-v", f"{volume}:{self.env.data_volume.path}"]
        labels = {ENV_LABEL: self.env.name, PROJECT_LABEL: self.project_id, INSTANCE_LABEL: "1",
                  "io.bakery.image": goal.image, "io.bakery.version": goal.version,
                  "io.bakery.git.commit": goal.git_commit, "io.bakery.git.message": goal.git_message,
                  CONFIG_LABEL: goal.config_digest}
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        podman.run(*args, goal.image_id or goal.image_ref, "/sbin/init", timeout=120)

    def port_of(self, name: str) -> int:
        """The host port of a running instance's app port (asked once, then remembered)."""
        if name in self._ports:
            return self._ports[name]
        proc = podman.run("port", name, str(self.env.health_check.port))
        text = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
        try:
            self._ports[name] = int(text.rsplit(":", 1)[1])
            return self._ports[name]
        except (IndexError, ValueError):
            raise OperationError(f"instance {name} publishes no port for {self.env.health_check.port} "
                                 f"(podman port said '{text}')") from None

    # ---- removing one

    def stop(self, name: str, graceful: bool) -> None:
        """Keep its journal; when graceful, stop it cleanly (it stops at once when removed otherwise)."""
        self._keep_journal(name)
        if graceful:
            # systemd gets SIGRTMIN+3 and stops every service cleanly (the app finishes its requests).
            podman.run("stop", "-t", str(STOP_TIMEOUT), name, check=False, timeout=STOP_TIMEOUT + 30)

    def remove(self, name: str) -> None:
        podman.remove_container(name)

    def _keep_journal(self, name: str) -> None:
        """Export a running instance's journal before it goes, so `bake.py logs` still shows it
        (bakery.observe.journals).

        Best effort: a failed export is logged and never stops a refresh."""
        try:
            facts = podman.run("container", "inspect", name, "--format",
                               '{{.State.Running}} {{index .Config.Labels "io.bakery.version"}}',
                               timeout=30).stdout.split()
            if facts[:1] != ["true"]:
                log.info("%s is not running: its journal cannot be exported", name)
                return
            started = time.monotonic()
            path = export_journal(self.folder / "journals", name, facts[1] if len(facts) > 1 else "?")
            log.info("kept the journal of %s in %s (%.2f s)", name, path, time.monotonic() - started)
        except (BakeryError, OSError) as exc:
            log.warning("could not keep the journal of %s: %s", name, exc)


def http_probe(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
    """GET path without keep-alive: (answered 200, what it answered)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read(300).decode(errors="replace").strip()
    except ConnectionRefusedError:
        return False, "connection refused"
    except TimeoutError:
        return False, f"no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{type(exc).__name__}: {exc}".rstrip(": ")
    finally:
        conn.close()
    if response.status == 200:
        return True, "status 200"
    return False, f"status {response.status}" + (f" {body[:120]}" if body else "")
