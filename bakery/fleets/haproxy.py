"""One HAProxy per environment: its daemon and its admin socket (the runtime API); the config text it runs
is rendered by bakery.fleets.haproxy_config.

bakery starts HAProxy itself (`haproxy -D`, its own session, no systemd needed) with
a frontend on 127.0.0.1:<lb_port> and one backend whose servers are the instances.
Servers are added and removed at run time over the admin socket, so a refresh never
reloads HAProxy:

    add server instances/NAME 127.0.0.1:PORT check ... weight 100   (registered in maintenance)
    enable health instances/NAME; set server instances/NAME state drain   (checked, no traffic)
    set server instances/NAME state ready                                  (in service)
    set server instances/NAME state drain ... state maint; del server      (retired)

A changed listener or health check (lb_port, path, interval...) is applied by a
seamless reload: the current servers are written into the config as static lines,
their states saved to the server-state file, and a new process takes the listening
sockets over the admin socket (`-x`) before the old one finishes its connections
(`-sf`). No connection is refused while that happens.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bakery.environments import Environment
from bakery.errors import ConfigError, OperationError
from bakery.fleets.haproxy_config import BACKEND, render_config, server_params, settings_digest
from bakery.processes import pid_alive

log = logging.getLogger("bakery.haproxy")

HAPROXY = "/usr/sbin/haproxy"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0

# srv_op_state and srv_admin_state of `show servers state`
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3
ADMIN_FORCED_MAINT, ADMIN_DRAIN = 0x01, 0x08 | 0x10


class HAProxyError(OperationError):
    """The load balancer refused a command or is not running."""


@dataclass
class Server:
    """One backend server as HAProxy sees it: `show servers state` merged with `show stat`."""

    name: str
    address: str
    port: int
    op_state: int
    admin_state: int
    status: str = ""  # show stat: UP, DOWN, DRAIN, MAINT, "UP 1/2" (going down), "DOWN 1/2" (going up), NOLB
    check_status: str = ""  # L7OK, L7STS, L4CON, L4TOUT, INI, ... (of the last check that finished)
    check_code: str = ""  # the HTTP status of the last check, when there was one
    # HAProxy marks a check in progress with "* " before check_status, and meanwhile shows check_code 0 and no
    # last_chk: the status is the last finished check's, its code is gone
    check_running: bool = False
    check_desc: str = ""
    # what the last check saw ("Connection refused", "HTTP status check returned code <3C>503<3E>")
    last_check: str = ""
    sessions: int = 0  # requests in flight (scur)
    queued: int = 0  # requests waiting for this server (qcur)

    @property
    def admin(self) -> str:
        if self.admin_state & ~(ADMIN_DRAIN):
            return "maint"
        if self.admin_state & ADMIN_DRAIN:
            return "drain"
        return "ready"

    @property
    def in_service(self) -> bool:
        """Takes new requests: running and neither drained nor in maintenance."""
        return self.op_state == OP_RUNNING and self.admin_state == 0

    @property
    def check_passed(self) -> bool:
        """The last health check passed and HAProxy considers the server up (whatever its admin state)."""
        up = self.op_state == OP_RUNNING and not self.status.startswith("DOWN")
        return self.check_status.startswith("L7OK") and up

    def check_summary(self) -> str:
        """What the last health check saw, for messages: 'L7STS 503', 'L4CON Connection refused'."""
        if not self.check_status:
            return "no check yet"
        if self.check_running and self.check_code in ("", "0") and not self.last_check:
            return f"{self.check_status} (its code is not shown while the next check runs)"
        detail = self.check_code or self.last_check or self.check_desc
        return f"{self.check_status} {detail}".strip()

    def to_dict(self) -> dict:
        return {"name": self.name, "address": f"{self.address}:{self.port}", "status": self.status, "admin": self.admin,
                "in_service": self.in_service, "check": self.check_summary(), "sessions": self.sessions}


class AdminSocket:
    """HAProxy's stats socket at level admin: one command per connection, answered in text."""

    def __init__(self, path: Path, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout

    def command(self, line: str) -> str:
        log.debug("haproxy %s: %s", self.path.name, line)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise HAProxyError(f"the load balancer is not running (no answer on {self.path})") from exc
        except OSError as exc:
            raise HAProxyError(f"the load balancer's admin socket {self.path} failed: {exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def answers(self) -> bool:
        try:
            return "Name: HAProxy" in self.command("show info")
        except HAProxyError:
            return False


class HAProxy:
    """The load balancer of one environment."""

    def __init__(self, env: Environment, folder: Path):
        self.env = env
        self.folder = folder
        self.cfg = folder / "haproxy.cfg"
        self.sock_path = folder / "haproxy.sock"
        self.pid_path = folder / "haproxy.pid"
        self.state_path = folder / "haproxy.state"
        self.socket = AdminSocket(self.sock_path)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.env.lb_port}"

    # ---- the daemon

    def pid(self) -> int | None:
        """The running HAProxy of this environment, or None (a stale pid file is not trusted)."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not cmdline or not cmdline[0].endswith(b"haproxy") or str(self.cfg).encode() not in cmdline:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def ensure_running(self, servers_if_started: Sequence[tuple[str, int]] = ()) -> str:
        """Start HAProxy, or reload it when its settings changed. Returns 'started', 'reloaded' or 'running'."""
        self.folder.mkdir(parents=True, exist_ok=True)
        pid = self.pid()
        if pid is None:
            self._start()
            return "started"
        wanted = settings_digest(render_config(self.env, self.folder))
        try:
            current = settings_digest(self.cfg.read_text())
        except OSError:
            current = None
        if current != wanted or not self.socket.answers():
            self._reload(pid)
            return "reloaded"
        return "running"

    def _check_port(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.env.lb_port))
            except OSError as exc:
                raise ConfigError(f"{self.env.path / 'group_vars/all/deploy.yml'}: "
                                  f"bakery_deploy.lb_port {self.env.lb_port}: "
                                  f"127.0.0.1:{self.env.lb_port} is in use by another process ({exc.strerror}); "
                                  "choose a free port") from exc

    def _write_config(self, servers: Sequence[tuple[str, int]]) -> None:
        text = render_config(self.env, self.folder, servers)
        tmp = self.cfg.with_name(f".haproxy.cfg.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        try:
            proc = subprocess.run([HAPROXY, "-c", "-q", "-f", str(tmp)], capture_output=True, text=True, timeout=30,
                                  check=False)
        except FileNotFoundError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"{HAPROXY} is not installed; run: make setup") from exc
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            alerts = [line for line in (proc.stderr or proc.stdout).splitlines() if "ALERT" in line]
            raise OperationError(f"HAProxy refused the generated config for environment '{self.env.name}': "
                                 f"{(alerts or ['unknown error'])[0].strip()}")
        tmp.replace(self.cfg)

    def _spawn(self, *extra: str) -> None:
        cmd = [HAPROXY, "-D", "-f", str(self.cfg), *extra]
        log.info("$ %s", shlex.join(cmd))
        # Its own session and no inherited output: the daemon outlives bake.py and never holds its pipes.
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=30, check=False, start_new_session=True)
        if proc.returncode != 0:
            alerts = ([line for line in proc.stderr.splitlines() if "ALERT" in line]
                      or proc.stderr.strip().splitlines()[-1:] or ["?"])
            raise OperationError(f"HAProxy of environment '{self.env.name}' did not start: {alerts[0].strip()}")

    def _wait_started(self, old_pid: int | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is not None and pid != old_pid and self.socket.answers():
                return
            time.sleep(0.05)
        raise OperationError(f"HAProxy of environment '{self.env.name}' did not answer on {self.sock_path} "
                             f"within {START_TIMEOUT:.0f} s")

    def _start(self) -> None:
        self._check_port()
        for stale in (self.sock_path, self.pid_path, self.state_path):
            stale.unlink(missing_ok=True)
        self._write_config([])
        self._spawn()
        self._wait_started()
        log.info("started HAProxy for %s on 127.0.0.1:%d (pid %s)", self.env.name, self.env.lb_port, self.pid())

    def _reload(self, old_pid: int) -> None:
        """Seamless reload: same servers and states, listening sockets handed over, old process finishes its
        requests."""
        servers: list[Server] = []
        if self.socket.answers():
            state = self.socket.command(f"show servers state {BACKEND}")
            self.state_path.write_text(state, encoding="utf-8")
            servers = list(self.servers().values())
        self._write_config([(s.name, s.port) for s in servers])
        extra = ["-x", str(self.sock_path)] if self.sock_path.exists() else []
        self._spawn(*extra, "-sf", str(old_pid))
        self._wait_started(old_pid)
        log.info("reloaded HAProxy for %s (pid %s, was %s)", self.env.name, self.pid(), old_pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Soft stop (SIGUSR1: stop listening, finish connections), SIGTERM after the timeout.
        False if it was not running."""
        pid = self.pid()
        if pid is None:
            for stale in (self.sock_path, self.pid_path):
                stale.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            time.sleep(0.2)
        for stale in (self.sock_path, self.pid_path, self.state_path):
            stale.unlink(missing_ok=True)
        return True

    # ---- servers

    def servers(self) -> dict[str, Server]:
        """Every server of the backend; empty when HAProxy is not running."""
        if not self.running():
            return {}
        state = self.socket.command(f"show servers state {BACKEND}")
        result: dict[str, Server] = {}
        for line in state.splitlines():
            fields = line.split()
            if len(fields) < 19 or line.startswith("#") or fields[1] != BACKEND:
                continue
            result[fields[3]] = Server(name=fields[3], address=fields[4], port=int(fields[18]), op_state=int(fields[5]),
                                       admin_state=int(fields[6]))
        if result:
            stats = self.socket.command("show stat").lstrip("# ")
            for row in csv.DictReader(io.StringIO(stats)):
                server = result.get(row.get("svname", "")) if row.get("pxname") == BACKEND else None
                if server is None:
                    continue
                server.status = row.get("status", "")
                server.check_running = (row.get("check_status") or "").startswith("*")
                server.check_status = (row.get("check_status") or "").lstrip("* ")
                server.check_code = row.get("check_code") or ""
                server.check_desc = row.get("check_desc") or ""
                server.last_check = _decode_check(row.get("last_chk") or "")
                server.sessions = int(row.get("scur") or 0)
                server.queued = int(row.get("qcur") or 0)
        return result

    def _admin(self, line: str, ok: tuple[str, ...] = ("",)) -> str:
        answer = self.socket.command(line).strip()
        if answer not in ok:
            first = answer.splitlines()[0] if answer else "?"
            raise HAProxyError(f"HAProxy of environment '{self.env.name}' refused '{line}': {first}")
        return answer

    def add_server(self, name: str, port: int) -> None:
        """Register a server that gets health checks but no traffic (drain) until enable() is called.

        Idempotent: a server that exists already (an interrupted run added it) is put in the same state."""
        existing = self.servers().get(name)
        if existing is None:
            self._admin(f"add server {BACKEND}/{name} 127.0.0.1:{port} {server_params(self.env)}",
                        ok=("New server registered.",))
        elif existing.port != port:
            raise HAProxyError(f"HAProxy of environment '{self.env.name}' has a server {name} on port {existing.port}, "
                               f"not {port}")
        elif existing.in_service:
            return
        self._admin(f"set server {BACKEND}/{name} state drain")
        self._admin(f"enable health {BACKEND}/{name}")

    def enable(self, name: str) -> None:
        self._admin(f"set server {BACKEND}/{name} state ready")

    def drain(self, name: str) -> None:
        self._admin(f"set server {BACKEND}/{name} state drain")

    def maint(self, name: str) -> None:
        self._admin(f"set server {BACKEND}/{name} state maint")

    def delete(self, name: str, timeout: float = 10.0) -> None:
        """Remove a server (maintenance first; HAProxy refuses while it still has connections, so retry)."""
        self.maint(name)
        deadline = time.monotonic() + timeout
        while True:
            answer = self.socket.command(f"del server {BACKEND}/{name}").strip()
            if answer.startswith("Server deleted") or "No such server" in answer or "No such backend" in answer:
                return
            if time.monotonic() > deadline:
                raise HAProxyError(f"HAProxy of environment '{self.env.name}' did not let go of server {name}: "
                                   f"{answer}")
            time.sleep(0.1)

    def wait_idle(self, name: str, timeout: float) -> bool:
        """Wait until no request is in flight or queued for this server. False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            server = self.servers().get(name)
            if server is None or (server.sessions == 0 and server.queued == 0):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _decode_check(text: str) -> str:
    """HAProxy escapes '<' and '>' in last_chk as <3C> and <3E>."""
    return text.replace("<3C>", "").replace("<3E>", "")


