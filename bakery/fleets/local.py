"""The local target: an environment is N podman instances of one image version behind its own HAProxy.

An instance is never changed: it is replaced, by the rolling refresh bakery runs
itself (bakery.fleets.rolling); this module gives that engine its primitives
(InstanceGroup) from podman (bakery.fleets.local_instances) and the environment's
load balancer (bakery.fleets.haproxy).

State kept under .bakery/envs/<env>/: haproxy.cfg/.sock/.pid/.state, the runtime
env files (runtime-<digest>.env, one per config ever deployed, so a rollback
can relaunch an older config), journals of removed instances, and the lock and
refresh.json every target keeps (bakery.fleets.state).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bakery import podman
from bakery.errors import ConfigError, OperationError
from bakery.fleets.base import Fleet, FleetStatus, Goal, InstanceStatus, RefreshOutcome, RefreshRequest
from bakery.fleets.haproxy import HAProxy, Server
from bakery.fleets.instance_group import InstanceGroup, Member
from bakery.fleets.local_instances import CONFIG_LABEL, PodmanInstances, http_probe, project_id, published_port
from bakery.fleets.rolling import RefreshState, RollingRefresh
from bakery.params.report import FILE as PARAMS_FILE
from bakery.params.report import instance_params
from bakery.params.service import local_root
from bakery.signals import Cancellation

log = logging.getLogger("bakery.fleet.local")

DRAIN_TIMEOUT = 30.0  # seconds requests in flight may take to finish on a drained instance


class LocalFleet(Fleet, InstanceGroup):
    target = "local"

    def __init__(self, project, catalog, env, progress):
        super().__init__(project, catalog, env, progress)
        self.haproxy = HAProxy(env, self.folder)
        self.project_id = project_id(project.root)
        self.podman = PodmanInstances(env, self.folder, self.project_id, local_root(project.state_dir, env.name))
        self.desired = env.instances
        self.exclusive = env.data_volume is not None
        self.health_path = env.health_check.path

    # ---- instances as podman and HAProxy see them

    def _observe(self) -> tuple[list[dict[str, Any]], dict[str, Server]]:
        return self.podman.containers(), self.haproxy.servers()

    def observe(self) -> list[Member]:
        containers, servers = self._observe()
        members = []
        for c in containers:
            name = c["Names"][0]
            labels = c.get("Labels") or {}
            server = servers.get(name)
            port = published_port(c, self.env.health_check.port)
            running = c.get("State") == "running"
            members.append(Member(
                name=name, version=labels.get("io.bakery.version"), config_digest=labels.get(CONFIG_LABEL),
                running=running, registered=server is not None,
                in_service=bool(server and server.in_service and running),
                check_passed=bool(server and server.check_passed),
                check=server.check_summary() if server else "not in the load balancer",
                created=float(c.get("Created") or 0), address=f"127.0.0.1:{port}" if port else None,
            ))
        return members

    # ---- InstanceGroup: the primitives of the rolling refresh

    def new_name(self) -> str:
        return f"bakery-{self.env.name}-{secrets.token_hex(3)}"

    def known_runtime(self, config_digest: str) -> dict[str, str] | None:
        return self.podman.known_runtime(config_digest)

    def launch(self, goal: Goal, name: str) -> None:
        self.podman.launch(goal, name)

    def register(self, name: str) -> None:
        self.haproxy.add_server(name, self.podman.port_of(name))

    def probe(self, name: str) -> tuple[bool, str]:
        try:
            port = self.podman.port_of(name)
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
        self.podman.stop(name, graceful)
        if name in servers:
            self.haproxy.delete(name)
        self.podman.remove(name)

    def probe_through_lb(self, requests: int) -> tuple[bool, str]:
        for _ in range(requests):
            ok, detail = http_probe("127.0.0.1", self.env.lb_port, self.health_path,
                                    self.env.health_check.timeout_ms / 1000)
            if not ok:
                return False, detail
        return True, "ok"

    # ---- Fleet

    def check_goal(self, goal: Goal) -> None:
        if goal.image != self.env.image:
            raise ConfigError(f"environment '{self.env.name}' runs image '{self.env.image}', not '{goal.image}'")
        podman.check_working()
        if not podman.image_exists(goal.image_id or goal.image_ref):
            raise ConfigError(f"{goal.image}:{goal.version} is in the catalog but its image {goal.image_ref} "
                              f"({goal.image_id[:19] or 'no id'}) is no longer in podman's storage; "
                              f"bake it again with: ./bake.py build {goal.image}")

    def _prepare(self) -> None:
        """The load balancer runs with current settings; after a fresh start, running instances are put back
        first."""
        result = self.haproxy.ensure_running()
        if result == "reloaded":
            self.progress.note(f"{self.env.name}: load balancer settings changed; HAProxy reloaded without dropping "
                               "connections")
        if result != "started":
            names = {c["Names"][0] for c in self.podman.containers()}
            for name in self.haproxy.servers():
                if name not in names:  # its instance was removed behind bakery's back: nothing can answer there
                    self.progress.note(f"{self.env.name}: removing {name} from the load balancer "
                                       "(its instance no longer exists)")
                    self.haproxy.delete(name)
            return
        self.progress.note(f"{self.env.name}: load balancer started on {self.haproxy.address}")
        self._put_back_running()

    def _put_back_running(self) -> None:
        """Instances that kept running while the load balancer was down take traffic again once healthy."""
        running = [m for m in self.observe() if m.running]
        for m in running:
            self.register(m.name)
        deadline = time.monotonic() + self.env.refresh.health_check_grace
        pending = {m.name for m in running}
        while pending and time.monotonic() < deadline:
            members = {m.name: m for m in self.observe()}
            for name in list(pending):
                seen = members.get(name)
                if seen is not None and seen.check_passed and self.probe(name)[0]:
                    self.enable(name)
                    pending.discard(name)
            time.sleep(0.2)
        if running:
            self.progress.note(f"{self.env.name}: {len(running) - len(pending)} running instances back in the "
                               "load balancer")

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
        if record is None or version is None:
            return None
        provenance = record.get("provenance") or {}
        if runtime is None:
            runtime = self.known_runtime(digest or "") or {}
        return Goal(image=self.env.image, version=version, image_ref=record["image_ref"], config_digest=digest or "",
                    runtime=runtime, git_commit=provenance.get("git_commit", ""),
                    git_message=provenance.get("git_message", ""), image_id=record.get("image_id") or "")

    def status(self) -> FleetStatus:
        containers, servers = self._observe()
        instances = [self._instance_status(c, servers) for c in sorted(containers, key=lambda c: c.get("Created") or 0)]
        known = {i.name for i in instances}
        for name, server in sorted(servers.items()):
            if name not in known:
                instances.append(InstanceStatus(name=name, version=None, config_digest=None, state="missing",
                                                health=server.status or "?", lb_state=server.admin, in_service=False,
                                                address=f"{server.address}:{server.port}",
                                                check=server.check_summary()))
        lb = self.haproxy.running()
        refresh = self.interrupted()
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
            summary = {"release": refresh.get("release_id"), "kind": refresh.get("kind"),
                       "to": refresh["goal"]["version"], "phase": refresh.get("phase"),
                       "pid": self.holder() if busy else refresh.get("pid")}
        return FleetStatus(env=self.env.name, target=self.target, state=state,
                           endpoint=self.haproxy.address if lb else None, lb_running=lb, desired=self.env.instances,
                           instances=instances, refresh=summary)

    def _instance_status(self, c: dict[str, Any], servers: dict[str, Server]) -> InstanceStatus:
        name = c["Names"][0]
        labels = c.get("Labels") or {}
        server = servers.get(name)
        port = published_port(c, self.env.health_check.port)
        running = c.get("State") == "running"
        return InstanceStatus(
            name=name, version=labels.get("io.bakery.version"), config_digest=labels.get(CONFIG_LABEL),
            state=c.get("State", "?"), health=(server.status or "?") if server else "absent",
            lb_state=server.admin if server else "absent", in_service=bool(server and server.in_service and running),
            address=f"127.0.0.1:{port}" if port else None, check=server.check_summary() if server else "",
            created=c.get("CreatedAt"), git_commit=labels.get("io.bakery.git.commit"),
            params=self._resolved_params(name) if running else None,
        )

    @staticmethod
    def _resolved_params(name: str) -> dict[str, Any] | None:
        """The parameter versions the instance resolved (bakery.params.report), None when it does not say."""
        proc = podman.run("exec", name, "cat", PARAMS_FILE, check=False, timeout=30)
        return instance_params(proc.stdout) if proc.returncode == 0 else None

    # ---- the refresh, run here (its state saved in refresh.json after every decision)

    def _save_state(self, state: RefreshState) -> None:
        self.env_state.save_refresh(state.to_dict())

    def _run(self, state: RefreshState, cancel: Cancellation,
             on_done: Callable[[RefreshOutcome], None]) -> RefreshOutcome:
        self._prepare()
        self._save_state(state)
        outcome = RollingRefresh(self, state, self.progress, cancel, self._save_state).run()
        on_done(outcome)  # the release is closed first: a kill right here leaves a state file the next run drops
        self.forget_interrupted()
        return outcome

    def refresh(self, request: RefreshRequest, cancel: Cancellation,
                on_done: Callable[[RefreshOutcome], None] | None = None) -> RefreshOutcome:
        self.check_goal(request.goal)
        state = RefreshState(release_id=request.release_id, kind=request.kind, env=self.env.name,
                             run_id=request.run_id, pid=os.getpid(), goal=request.goal, previous=request.previous,
                             preferences=dataclasses.asdict(request.preferences), desired=self.env.instances)
        if not request.preferences.skip_matching:
            state.replace = [m.name for m in self.observe()]
        return self._run(state, cancel, on_done or (lambda outcome: None))

    def resume(self, cancel: Cancellation,
               on_done: Callable[[RefreshOutcome], None] | None = None) -> tuple[dict[str, Any], RefreshOutcome]:
        data = self.interrupted()
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
