"""haproxy.cfg of one environment, rendered from its deploy settings: pure text, so it is easy to test and to compare.

The first lines carry a digest of everything but the server lines: HAProxy is reloaded only when the listener
or the health check changed, never because servers came and went (those change at run time, over the admin socket).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bakery.environments import Environment
from bakery.provenance import sha256_json

FRONTEND = "lb"
BACKEND = "instances"
SETTINGS_MARK = "# bakery-settings: "


def server_params(env: Environment) -> str:
    """Check settings of every server line, static or dynamic (dynamic servers ignore default-server)."""
    hc = env.health_check
    return (f"check inter {hc.interval_ms}ms fastinter {hc.interval_ms}ms downinter {hc.interval_ms}ms "
            f"rise {hc.rise} fall {hc.fall} weight 100")


def render_config(env: Environment, folder: Path, servers: Sequence[tuple[str, int]] = ()) -> str:
    """The whole haproxy.cfg. The first lines carry a digest of everything but the server lines."""
    hc = env.health_check
    base = f"""global
    pidfile {folder / 'haproxy.pid'}
    stats socket {folder / 'haproxy.sock'} mode 600 level admin expose-fd listeners
    server-state-file {folder / 'haproxy.state'}
    hard-stop-after 60s
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 10s
    timeout http-request 10s
    timeout check {hc.timeout_ms}ms
    load-server-state-from-file global

frontend {FRONTEND}
    bind 127.0.0.1:{env.lb_port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    # Active health checks: a server takes traffic only while GET {hc.path} answers 200 with a body. Reading the
    # body means a check never closes the connection while the app is still writing its answer.
    option httpchk GET {hc.path}
    http-check expect status 200
    http-check expect rstring .
    # A request whose server went away is sent again to another one.
    retry-on all-retryable-errors
    retries 3
    option redispatch 1
    # No idle server connections: a drained server has nothing left once its requests finished.
    option http-server-close
    default-server {server_params(env)}
"""
    digest = sha256_json({"config": base})
    lines = [f"# HAProxy of bakery environment '{env.name}': written by bake.py, do not edit.",
             f"{SETTINGS_MARK}{digest}", base.rstrip("\n")]
    params = server_params(env)
    lines += [f"    server {name} 127.0.0.1:{port} {params}" for name, port in servers]
    return "\n".join(lines) + "\n"


def settings_digest(text: str) -> str | None:
    for line in text.splitlines()[:5]:
        if line.startswith(SETTINGS_MARK):
            return line[len(SETTINGS_MARK):].strip()
    return None
