"""HTTP routing and wire format; the work itself is done by App and ItemStore."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from webapp import __version__
from webapp.items import MAX_ITEM_BYTES, valid_key

log = logging.getLogger("webapp.http")
READ_CHUNK = 64 * 1024
# An oversized upload is read and dropped up to this size after the 413, so the client
# sees the answer instead of a reset connection; beyond it the connection is just closed.
DRAIN_LIMIT = 8 * MAX_ITEM_BYTES
KEY_RULE = "use 1-128 characters of A-Z a-z 0-9 _ . - (not '.' or '..')"


class Handler(BaseHTTPRequestHandler):
    server_version = f"webapp/{__version__}"
    sys_version = ""
    # HTTP/1.0: one request per connection, so no idle keep-alive connection delays shutdown.
    protocol_version = "HTTP/1.0"
    # A stalled client cannot hold a request thread (and so a graceful stop) for long.
    timeout = 20

    # ---- request log: one line per request with method, path, status and duration

    def handle_one_request(self) -> None:
        self._start: float | None = None
        self._status: int | None = None
        super().handle_one_request()
        if self._status is not None:
            self._log_request()

    def parse_request(self) -> bool:
        self._start = time.monotonic()
        return super().parse_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Replaced by _log_request, which knows the duration."""

    def log_message(self, fmt: str, *args: Any) -> None:
        log.warning("%s %s", self.client_address[0], fmt % args)

    def _log_request(self) -> None:
        path = urlsplit(self.path).path if getattr(self, "path", None) else "-"
        millis = (time.monotonic() - self._start) * 1000 if self._start is not None else 0.0
        # Load-balancer health checks arrive every few seconds: successful ones only at debug.
        level = logging.DEBUG if path == "/health" and self._status == 200 else logging.INFO
        log.log(level, "%s %s %d %.1fms client=%s", getattr(self, "command", None) or "-", path, self._status,
                millis, self.client_address[0])

    # ---- responses

    def _send(self, status: int, body: bytes, content_type: str | None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, (json.dumps(payload, sort_keys=True) + "\n").encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the base class raises itself (malformed request, unknown method) as JSON too."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._error(code, message or phrase)

    # ---- routing

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_PUT = do_DELETE = do_POST = do_PATCH = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            routes = {"GET": self._health}
        elif path == "/version":
            routes = {"GET": self._version}
        elif path == "/items":
            routes = {"GET": self._list_items}
        elif path.startswith("/items/"):
            routes = {"GET": self._get_item, "PUT": self._put_item, "DELETE": self._delete_item}
        else:
            self._error(404, f"no such path: {path[:200]}")
            return
        action = routes.get("GET" if self.command == "HEAD" else self.command)
        if action is None:
            allowed = sorted({*routes, "HEAD"} if "GET" in routes else set(routes))
            self._error(405, f"{self.command} is not allowed on {path[:200]}", {"Allow": ", ".join(allowed)})
            return
        if not path.startswith("/items/"):
            action()
            return
        key = unquote(path[len("/items/"):])
        if not valid_key(key):
            self.close_connection = True
            self._error(400, f"invalid item key {key[:140]!r}: {KEY_RULE}")
            return
        action(key)

    @property
    def _app(self):
        return self.server.app  # type: ignore[attr-defined]

    def _health(self) -> None:
        self._json(*self._app.health())

    def _version(self) -> None:
        self._json(200, self._app.version())

    def _list_items(self) -> None:
        try:
            keys = self._app.items.keys()
        except OSError as exc:
            self._storage_failed("list items", exc)
            return
        self._json(200, {"items": keys})

    def _get_item(self, key: str) -> None:
        try:
            data = self._app.items.get(key)
        except OSError as exc:
            self._storage_failed(f"read item {key}", exc)
            return
        if data is None:
            self._error(404, f"no item {key!r}")
            return
        self._send(200, data, "application/octet-stream")

    def _delete_item(self, key: str) -> None:
        try:
            deleted = self._app.items.delete(key)
        except OSError as exc:
            self._storage_failed(f"delete item {key}", exc)
            return
        if not deleted:
            self._error(404, f"no item {key!r}")
            return
        self._send(204, b"", None)

    def _put_item(self, key: str) -> None:
        self.close_connection = True
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "send the body with a Content-Length header (chunked uploads are not supported)")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._error(411, "a Content-Length header is required")
            return
        if not length_text.strip().isdigit():
            self._error(400, f"invalid Content-Length {length_text[:40]!r}")
            return
        length = int(length_text)
        if length > MAX_ITEM_BYTES:
            self._error(413, f"item is {length} bytes; the limit is {MAX_ITEM_BYTES} bytes")
            self._discard(length)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._error(400, f"request body ended after {len(body)} of {length} bytes")
            return
        try:
            created = self._app.items.put(key, body)
        except OSError as exc:
            self._storage_failed(f"store item {key}", exc)
            return
        # 201 when the item is new, 200 when it replaced one (RFC 9110); either way it is on disk.
        status = 201 if created else 200
        self._json(status, {"key": key, "size": length, "sha256": hashlib.sha256(body).hexdigest()},
                   {"Location": f"/items/{key}"} if created else None)

    def _discard(self, length: int) -> None:
        remaining = min(length, DRAIN_LIMIT)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, READ_CHUNK))
                if not chunk:
                    return
                remaining -= len(chunk)
        except OSError:
            return

    def _storage_failed(self, what: str, exc: OSError) -> None:
        log.error("cannot %s: %s", what, exc)
        self._error(503, f"cannot {what}: {exc.strerror or exc}")
