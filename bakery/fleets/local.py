"""The local target: an environment is N podman instances of one image version behind its own HAProxy.

Every instance is booted like a server (`--systemd=always`, /sbin/init), gets the
runtime config as a read-only file at /etc/bakery/launch/runtime.env (applied at
boot by the image's bakery-runtime-config.service), publishes its app port on
127.0.0.1 only, and carries labels naming the environment, image version, git
commit and message, and config digest. An instance is never changed: it is
replaced (bakery.refresh).

State kept under .bakery/envs/<env>/: haproxy.cfg/.sock/.pid/.state, the runtime
env files (runtime-<digest>.env, one per config ever deployed, so a rollback
can relaunch an older config), refresh.json (the refresh in progress, for resuming
it) and lock (flock: one changing command per environment at a time).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bakery import podman
from bakery.errors import BakeryError, ConfigError, OperationError
from bakery.files import write_atomically
from bakery.fleets.base import Fleet, FleetStatus, Goal, InstanceStatus, RefreshOutcome, RefreshRequest
from bakery.haproxy import HAProxy, Server
from bakery.observe.journals import export_journal
from bakery.refresh import InstanceGroup, Member, RefreshState, RollingRefresh
from bakery.signals import Cancellation

log = logging.getLogger("bakery.fleet.local")

ENV_LABEL = "io.bakery.env"
PROJECT_LABEL = "io.bakery.project"
INSTANCE_LABEL = "io.bakery.instance"
CONFIG_LABEL = "io.bakery.config"
RELEASE_LABEL = "io.bakery.release"
LAUNCH_FILE = "/etc/bakery/launch/runtime.env"
DRAIN_TIMEOUT = 30.0  # seconds requests in flight may take to finish on a drained instance
STOP_TIMEOUT = 30  # podman stop: systemd shuts the services down cleanly within this


def short_digest(digest: str | None) -> str:
    return (digest or "").removeprefix("sha256:")[:12]


def parse_env_file(text: str) -> dict[str, str]:
    """The runtime env file back into a mapping (the inverse of Environment.runtime_env_text)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().removeprefix('"').removesuffix('"')
    return values


def project_id(root: Path) -> str:
    """Instances carry it: two projects on one host may use the same environment names without mixing."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


class LocalFleet(Fleet, InstanceGroup):
    target = "local"

    def __init__(self, project, catalog, env, progress):
        super().__init__(project, catalog, env, progress)
        self.folder = project.state_dir / "envs" / env.name
        self.haproxy = HAProxy(env, self.folder)
        self.project_id = project_id(project.root)
        self.desired = env.instances
        self.exclusive = env.data_volume is not None
        self.health_path = env.health_check.path
        self.state_file = self.folder / "refresh.json"
        self._held = False  # this object holds the environment's lock
        self._ports: dict[str, int] = {}

    # ---- locking

    @contextmanager
    def _flock(self) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._held = True
            try:
                yield True
            finally:
                self._held = False
        finally:
            os.close(fd)  # closing releases the lock; so does the process dying (kill -9 included)

    def holder(self) -> int | None:
        try:
            return int((self.folder / "lock").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @contextmanager
    def lock(self) -> Iterator[None]:
        with self._flock() as acquired:
            if not acquired:
                raise OperationError(f"environment '{self.env.name}' is busy: another bake.py (pid {self.holder() or '?'}) is changing it; "
                                     f"wait for it, or watch it with: ./bake.py status --env {self.env.name}")
            yield

    @contextmanager
    def try_lock(self) -> Iterator[bool]:
        if self._held:
            yield True
            return
        with self._flock() as acquired:
            yield acquired

    # ---- instances as podman and HAProxy see them

    def _containers(self) -> list[dict[str, Any]]:
        proc = podman.run("ps", "-a", "--filter", f"label={ENV_LABEL}={self.env.name}", "--filter", f"label={PROJECT_LABEL}={self.project_id}",
                          "--filter", f"label={INSTANCE_LABEL}=1", "--format", "json")
        return json.loads(proc.stdout or "[]")

    @staticmethod
    def _port(container: dict[str, Any], container_port: int) -> int | None:
        for mapping in container.get("Ports") or []:
            if int(mapping.get("container_port", 0)) == container_port and mapping.get("host_port"):
                return int(mapping["host_port"])
        return None

    def _observe(self) -> tuple[list[dict[str, Any]], dict[str, Server]]:
        return self._containers(), self.haproxy.servers()

    def observe(self) -> list[Member]:
        containers, servers = self._observe()
        members = []
        for c in containers:
            name = c["Names"][0]
            labels = c.get("Labels") or {}
            server = servers.get(name)
            port = self._port(c, self.env.health_check.port)
            running = c.get("State") == "running"
            members.append(Member(
                name=name, version=labels.get("io.bakery.version"), config_digest=labels.get(CONFIG_LABEL), running=running,
                registered=server is not None, in_service=bool(server and server.in_service and running),
                check_passed=bool(server and server.check_passed), check=server.check_summary() if server else "not in the load balancer",
                created=float(c.get("Created") or 0), address=f"127.0.0.1:{port}" if port else None,
            ))
        return members

    # ---- InstanceGroup: the primitives of the rolling refresh

    def new_name(self) -> str:
        return f"bakery-{self.env.name}-{secrets.token_hex(3)}"

    def runtime_file(self, goal: Goal) -> Path:
        """The runtime config of a goal as the env file mounted into its instances (one file per config digest)."""
        path = self.folder / f"runtime-{short_digest(goal.config_digest)}.env"
        text = dataclasses.replace(self.env, runtime=goal.runtime).runtime_env_text()
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
            podman.run("volume", "create", "--label", f"{ENV_LABEL}={self.env.name}", "--label", f"{PROJECT_LABEL}={self.project_id}", name)
            log.info("created volume %s", name)
        return name

    def launch(self, goal: Goal, name: str) -> None:
        runtime = self.runtime_file(goal)
        args = ["run", "-d", "--name", name, "--hostname", name, "--systemd=always",
                "-p", f"127.0.0.1::{self.env.health_check.port}",
                "-v", f"{runtime}:{LAUNCH_FILE}:ro",
                "--stop-timeout", str(STOP_TIMEOUT)]
        volume = self._ensure_volume()
        if volume:
            args += ["-v", f"{volume}:{self.env.data_volume.path}"]
        labels = {ENV_LABEL: self.env.name, PROJECT_LABEL: self.project_id, INSTANCE_LABEL: "1",
                  "io.bakery.image": goal.image, "io.bakery.version": goal.version, "io.bakery.git.commit": goal.git_commit,
                  "io.bakery.git.message": goal.git_message, CONFIG_LABEL: goal.config_digest}
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        podman.run(*args, goal.image_id or goal.image_ref, "/sbin/init", timeout=120)

    def _port_of(self, name: str) -> int:
        if name in self._ports:
            return self._ports[name]
        proc = podman.run("port", name, str(self.env.health_check.port))
        text = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
        try:
            self._ports[name] = int(text.rsplit(":", 1)[1])
            return self._ports[name]
        except (IndexError, ValueError):
            raise OperationError(f"instance {name} publishes no port for {self.env.health_check.port} (podman port said '{text}')") from None

    def register(self, name: str) -> None:
        self.haproxy.add_server(name, self._port_of(name))

    def probe(self, name: str) -> tuple[bool, str]:
        try:
            port = self._port_of(name)
        except OperationError as exc:
            return False, str(exc)
        return http_probe("127.0.0.1", port, self.health_path, self.env.health_check.timeout_ms / 1000)

    def enable(self, name: str) -> None:
        self.haproxy.enable(name)

    def retire(self, name: str, graceful: bool) -> None:
        servers = self.haproxy.servers()
        if graceful and name in servers:
            self.haproxy.drain(name)
            if not self.haproxy.wait_idle(name, DRAIN_TIMEOUT):
                log.warning("%s still had requests in flight after %.0f s; stopping it anyway", name, DRAIN_TIMEOUT)
            self.haproxy.maint(name)
        elif name in servers:
            self.haproxy.maint(name)
        self._keep_journal(name)
        if graceful:
            # systemd gets SIGRTMIN+3 and stops every service cleanly (the app finishes its requests).
            podman.run("stop", "-t", str(STOP_TIMEOUT), name, check=False, timeout=STOP_TIMEOUT + 30)
        if name in servers:
            self.haproxy.delete(name)
        podman.remove_container(name)

    def _keep_journal(self, name: str) -> None:
        """Export a running instance's journal before it goes, so `bake.py logs` still shows it (bakery.observe.journals).

        Best effort: a failed export is logged and never stops a refresh."""
        try:
            facts = podman.run("container", "inspect", name, "--format", '{{.State.Running}} {{index .Config.Labels "io.bakery.version"}}',
                               timeout=30).stdout.split()
            if facts[:1] != ["true"]:
                log.info("%s is not running: its journal cannot be exported", name)
                return
            started = time.monotonic()
            path = export_journal(self.folder / "journals", name, facts[1] if len(facts) > 1 else "?")
            log.info("kept the journal of %s in %s (%.2f s)", name, path, time.monotonic() - started)
        except (BakeryError, OSError) as exc:
            log.warning("could not keep the journal of %s: %s", name, exc)

    def probe_through_lb(self, requests: int) -> tuple[bool, str]:
        for _ in range(requests):
            ok, detail = http_probe("127.0.0.1", self.env.lb_port, self.health_path, self.env.health_check.timeout_ms / 1000)
            if not ok:
                return False, detail
        return True, "ok"

    # ---- Fleet

    def check_goal(self, goal: Goal) -> None:
        if goal.image != self.env.image:
            raise ConfigError(f"environment '{self.env.name}' runs image '{self.env.image}', not '{goal.image}'")
        podman.check_working()
        if not podman.image_exists(goal.image_id or goal.image_ref):
            raise ConfigError(f"{goal.image}:{goal.version} is in the catalog but its image {goal.image_ref} ({goal.image_id[:19] or 'no id'}) "
                              f"is no longer in podman's storage; bake it again with: ./bake.py build {goal.image}")

    def _prepare(self) -> None:
        """The load balancer runs with current settings; after a fresh start, running instances are put back first."""
        result = self.haproxy.ensure_running()
        if result == "reloaded":
            self.progress.note(f"{self.env.name}: load balancer settings changed; HAProxy reloaded without dropping connections")
        if result != "started":
            names = {c["Names"][0] for c in self._containers()}
            for name in self.haproxy.servers():
                if name not in names:  # its instance was removed behind bakery's back: nothing can answer there
                    self.progress.note(f"{self.env.name}: removing {name} from the load balancer (its instance no longer exists)")
                    self.haproxy.delete(name)
            return
        self.progress.note(f"{self.env.name}: load balancer started on {self.haproxy.address}")
        running = [m for m in self.observe() if m.running]
        for m in running:
            self.register(m.name)
        deadline = time.monotonic() + self.env.refresh.health_check_grace
        pending = {m.name for m in running}
        while pending and time.monotonic() < deadline:
            members = {m.name: m for m in self.observe()}
            for name in list(pending):
                m = members.get(name)
                if m is not None and m.check_passed and self.probe(name)[0]:
                    self.enable(name)
                    pending.discard(name)
            time.sleep(0.2)
        if running:
            self.progress.note(f"{self.env.name}: {len(running) - len(pending)} running instances back in the load balancer")

    def current(self) -> Goal | None:
        members = [m for m in self.observe() if m.running]
        pool = [m for m in members if m.in_service] or members
        if not pool:
            return None
        counts = Counter((m.version, m.config_digest) for m in pool)
        newest = {key: max(m.created for m in pool if (m.version, m.config_digest) == key) for key in counts}
        version, digest = max(counts, key=lambda key: (counts[key], newest[key]))
        return self.goal_for(version, digest)

    def goal_for(self, version: str | None, digest: str | None, runtime: dict[str, str] | None = None) -> Goal | None:
        record = self.catalog.version(self.env.image, version) if version else None
        if record is None:
            return None
        provenance = record.get("provenance") or {}
        if runtime is None:
            runtime = self.known_runtime(digest or "") or {}
        return Goal(image=self.env.image, version=version, image_ref=record["image_ref"], config_digest=digest or "",
                    runtime=runtime, git_commit=provenance.get("git_commit", ""), git_message=provenance.get("git_message", ""),
                    image_id=record.get("image_id") or "")

    def status(self) -> FleetStatus:
        containers, servers = self._observe()
        instances = []
        for c in sorted(containers, key=lambda c: c.get("Created") or 0):
            name = c["Names"][0]
            labels = c.get("Labels") or {}
            server = servers.get(name)
            port = self._port(c, self.env.health_check.port)
            running = c.get("State") == "running"
            instances.append(InstanceStatus(
                name=name, version=labels.get("io.bakery.version"), config_digest=labels.get(CONFIG_LABEL), state=c.get("State", "?"),
                health=(server.status or "?") if server else "absent", lb_state=server.admin if server else "absent",
                in_service=bool(server and server.in_service and running), address=f"127.0.0.1:{port}" if port else None,
                check=server.check_summary() if server else "", created=c.get("CreatedAt"),
                git_commit=labels.get("io.bakery.git.commit"),
            ))
        known = {i.name for i in instances}
        for name, server in sorted(servers.items()):
            if name not in known:
                instances.append(InstanceStatus(name=name, version=None, config_digest=None, state="missing", health=server.status or "?",
                                                lb_state=server.admin, in_service=False, address=f"{server.address}:{server.port}",
                                                check=server.check_summary()))
        lb = self.haproxy.running()
        refresh = self._read_state()
        with self.try_lock() as free:
            busy = not free
        if busy:
            state = "refreshing"
        elif refresh:
            state = "interrupted"
        elif not instances and not lb:
            state = "down"
        elif lb and instances and all(i.in_service for i in instances) and len(instances) == self.env.instances \
                and len({(i.version, i.config_digest) for i in instances}) == 1:
            state = "up"
        else:
            state = "degraded"
        summary = None
        if refresh:
            summary = {"release": refresh.get("release_id"), "kind": refresh.get("kind"), "to": refresh["goal"]["version"],
                       "phase": refresh.get("phase"), "pid": self.holder() if busy else refresh.get("pid")}
        return FleetStatus(env=self.env.name, target=self.target, state=state, endpoint=self.haproxy.address if lb else None,
                           lb_running=lb, desired=self.env.instances, instances=instances, refresh=summary)

    # ---- refresh state (refresh.json, written atomically after every decision)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OperationError(f"{self.state_file}: unreadable refresh state ({exc}); move it aside and run the deploy again") from exc

    def _save_state(self, state: RefreshState) -> None:
        write_atomically(self.state_file, json.dumps(state.to_dict(), indent=2, sort_keys=True))

    def interrupted(self) -> dict[str, Any] | None:
        return self._read_state()

    def forget_interrupted(self) -> None:
        self.state_file.unlink(missing_ok=True)

    def _run(self, state: RefreshState, cancel: Cancellation, on_done: Callable[[RefreshOutcome], None]) -> RefreshOutcome:
        self._prepare()
        self._save_state(state)
        outcome = RollingRefresh(self, state, self.progress, cancel, self._save_state).run()
        on_done(outcome)  # the release is closed first: a kill right here leaves a state file the next run simply drops
        self.forget_interrupted()
        return outcome

    def refresh(self, request: RefreshRequest, cancel: Cancellation, on_done: Callable[[RefreshOutcome], None] | None = None) -> RefreshOutcome:
        self.check_goal(request.goal)
        state = RefreshState(release_id=request.release_id, kind=request.kind, env=self.env.name, run_id=request.run_id, pid=os.getpid(),
                             goal=request.goal, previous=request.previous, preferences=dataclasses.asdict(request.preferences),
                             desired=self.env.instances)
        if not request.preferences.skip_matching:
            state.replace = [m.name for m in self.observe()]
        return self._run(state, cancel, on_done or (lambda outcome: None))

    def resume(self, cancel: Cancellation, on_done: Callable[[RefreshOutcome], None] | None = None) -> tuple[dict[str, Any], RefreshOutcome]:
        data = self._read_state()
        if data is None:
            raise OperationError(f"environment '{self.env.name}' has no unfinished refresh")
        state = RefreshState.from_dict(data)
        state.resumed_by.append(os.getpid())
        state.desired = self.env.instances
        return data, self._run(state, cancel, on_done or (lambda outcome: None))

    def down(self, cancel: Cancellation) -> int:
        members = self.observe()
        for m in members:
            cancel.check()
            self.progress.note(f"{self.env.name}: draining and removing {m.name} ({m.version})")
            self.retire(m.name, graceful=m.running)
        if self.haproxy.stop():
            self.progress.note(f"{self.env.name}: load balancer on {self.haproxy.address} stopped")
        return len(members)


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
