"""A local IMDSv2 for verify VMs: the guest asks 169.254.169.254 as on EC2, and qemu forwards that to this server.

It answers as EC2's does with IMDSv1 off (bakery's launch templates require tokens): a token from `PUT
/latest/api/token` with a TTL of 1..21600 s (403 when X-Forwarded-For shows a proxy relayed the PUT), then GETs
carrying it: user-data, meta-data/..., the identity document; without a live token, 401. The user data is the
VM's runtime config, secrets included: served, never logged. Nothing goes to stderr; `requests` keeps (method,
path, status) per request, no header values.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bakery.errors import OperationError

IMDS_ADDRESS = "169.254.169.254"
GUEST_NETWORK = "169.254.169.0/24"  # qemu's user network for the VM: it must hold IMDS_ADDRESS
GUEST_IP = "169.254.169.15"  # the first address qemu's DHCP server gives
TTL_HEADER, TOKEN_HEADER = "X-aws-ec2-metadata-token-ttl-seconds", "X-aws-ec2-metadata-token"
MAX_TTL_SECONDS = 21600  # six hours, EC2's limit
TTL_RE, LENGTH_RE = re.compile(r"[0-9]{1,5}"), re.compile(r"[0-9]{1,9}")
PREFIX = "/latest/"
TEXT, OCTETS, JSON = "text/plain", "application/octet-stream", "application/json"
MAX_PUT_BODY, POLL_SECONDS, BIND_ATTEMPTS = 64 * 1024, 0.05, 8  # the poll interval is how soon close() returns

Answer = tuple[int, str, bytes, dict[str, str]]  # status, content type, body, extra headers


def failure(status: int, reason: str) -> Answer:
    return status, TEXT, f"{status} - {reason}\n".encode(), {}


NOT_FOUND = failure(404, "Not Found")


class ImdsEndpoint:
    """Serves one VM's instance metadata on a loopback port while the `with` block runs. `tree` holds each leaf
    under /latest/ as (content type, body); directory listings are derived from its keys."""

    def __init__(self, user_data: bytes | None, instance_id: str, region: str, image_id: str, *,
                 instance_type: str = "t3.micro", private_ip: str = GUEST_IP,
                 extra_metadata: Mapping[str, str] | None = None, port: int = 0):
        self.address = ("127.0.0.1", port)  # loopback only: qemu's relay is the one client
        self.requests: list[tuple[str, str, int]] = []
        self._tokens: dict[str, float] = {}
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        zone, hostname = f"{region}a", f"ip-{private_ip.replace('.', '-')}.{region}.compute.internal"
        meta = {"ami-id": image_id, "instance-id": instance_id, "instance-type": instance_type,
                "local-ipv4": private_ip, "hostname": hostname, "local-hostname": hostname,
                "placement/region": region, "placement/availability-zone": zone, **(extra_metadata or {})}
        identity: dict[str, Any] = {
            "accountId": "000000000000", "architecture": "x86_64", "availabilityZone": zone, "billingProducts": None,
            "devpayProductCodes": None, "marketplaceProductCodes": None, "imageId": image_id, "region": region,
            "instanceId": instance_id, "instanceType": instance_type, "privateIp": private_ip,
            "pendingTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": "2017-09-30"}
        self.tree = {f"meta-data/{key}": (TEXT, value.encode()) for key, value in meta.items()}
        self.tree["dynamic/instance-identity/document"] = (JSON, json.dumps(identity, indent=2).encode())
        if user_data is not None:
            self.tree["user-data"] = (OCTETS, user_data)

    def __enter__(self) -> ImdsEndpoint:
        for _ in range(BIND_ATTEMPTS):
            self._server = _Server(self.address, self)
            if reaches(self._server):
                break
            self._server.server_close()
        else:
            self._server = None
            raise OperationError(f"no loopback port reaches the IMDS endpoint in {BIND_ATTEMPTS} tries: a NAT rule "
                                 "takes each one elsewhere; list them with `nft list ruleset`")
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_SECONDS,), daemon=True)
        self._thread.start()
        return self

    def close(self, *exc_info: object) -> None:
        """Stop serving and join the server thread; safe to call twice."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)

    __exit__ = close

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the IMDS endpoint is not running: use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """What BAKERY_IMDS_URL takes (the applier appends /api/token and /user-data)."""
        return f"http://127.0.0.1:{self.port}/latest"

    def netdev_options(self) -> str:
        """For `-netdev user,...`: qemu forwards only addresses inside its user network (net=), and `cmd:` runs socat
        (make setup installs it) per guest connection, where a `tcp:` target is one connection made at start-up."""
        return f"net={GUEST_NETWORK},guestfwd=tcp:{IMDS_ADDRESS}:80-cmd:socat - TCP:127.0.0.1:{self.port}"

    def put(self, path: str, headers: Message) -> Answer:
        if path != f"{PREFIX}api/token":
            return NOT_FOUND
        if headers.get("X-Forwarded-For") is not None:
            return failure(403, "Forbidden")
        ttl = headers.get(TTL_HEADER, "")
        if not TTL_RE.fullmatch(ttl) or not 1 <= int(ttl) <= MAX_TTL_SECONDS:
            return failure(400, "Missing or Invalid Parameters")
        seconds, token, now = int(ttl), secrets.token_urlsafe(32), time.monotonic()
        with self.lock:
            self._tokens = {live: until for live, until in self._tokens.items() if until > now}
            self._tokens[token] = now + seconds
        return 200, TEXT, token.encode("ascii"), {TTL_HEADER: str(seconds)}

    def get(self, path: str, headers: Message) -> Answer:
        if not path.startswith(PREFIX):
            return NOT_FOUND
        with self.lock:
            live = self._tokens.get(headers.get(TOKEN_HEADER) or "", 0.0) > time.monotonic()
        if not live:
            return failure(401, "Unauthorized")
        return self.lookup(path[len(PREFIX):].partition("?")[0])

    def lookup(self, key: str) -> Answer:
        """A leaf's bytes, or a directory's listing (subdirectories end in /), or 404."""
        if key in self.tree:
            return 200, *self.tree[key], {}
        below = f"{key.rstrip('/')}/" if key.strip("/") else ""
        rests = [leaf[len(below):] for leaf in self.tree if leaf.startswith(below)]
        names = sorted({"".join(rest.partition("/")[:2]) for rest in rests})  # "placement/region" -> "placement/"
        return (200, TEXT, "\n".join(names).encode(), {}) if names else NOT_FOUND


def reaches(server: _Server) -> bool:
    """Whether a connection to the server's port arrives at it. bind() may hand out a port that a DNAT rule sends
    elsewhere (podman publishes container ports that way, binding nothing): seen here as refused connections."""
    server.socket.settimeout(1)
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=2) as client:
            accepted, peer = server.socket.accept()
            accepted.close()
            return bool(peer == client.getsockname())
    except OSError:  # refused, or accepted elsewhere (this accept() timed out)
        return False
    finally:
        server.socket.settimeout(None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], endpoint: ImdsEndpoint):
        self.endpoint = endpoint
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a stalled client never holds a thread for long
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing on stderr: request lines are kept in ImdsEndpoint.requests instead."""

    def reply(self, answer: Answer) -> None:
        status, content_type, body, extra = answer
        with self.server.endpoint.lock:
            self.server.endpoint.requests.append((self.command, self.path, status))
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **extra}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self) -> None:
        length = self.headers.get("Content-Length", "0")
        self.rfile.read(min(int(length), MAX_PUT_BODY) if LENGTH_RE.fullmatch(length) else 0)
        self.reply(self.server.endpoint.put(self.path, self.headers))

    def do_GET(self) -> None:
        self.reply(self.server.endpoint.get(self.path, self.headers))

    def refuse(self) -> None:
        self.reply(failure(405, "Method Not Allowed"))

    do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = refuse
