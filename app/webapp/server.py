"""Process lifecycle: listen, tell systemd when ready, finish in-flight requests on SIGTERM, exit 0."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from webapp import __version__, logs
from webapp.app import App
from webapp.config import Config, ConfigError
from webapp.handler import Handler
from webapp.notify import notify

log = logging.getLogger("webapp")
READY_POLL_SECONDS = 0.5
ACCEPT_POLL_SECONDS = 0.1  # how long shutdown() may wait for the accept loop to notice


class Server(ThreadingHTTPServer):
    daemon_threads = False  # a request in flight keeps the process alive until it is answered...
    block_on_close = True  # ...and server_close() waits for it
    request_queue_size = 128

    def __init__(self, app: App):
        self.app = app
        self.address_family = socket.AF_INET6 if ":" in app.config.bind else socket.AF_INET
        super().__init__((app.config.bind, app.config.port), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS, which can hang in a
        # container without a resolver; nothing here needs that name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        log.warning("connection from %s failed: %s", client_address[0], sys.exc_info()[1])


class StopSignal:
    """SIGTERM/SIGINT (stop) and SIGHUP (reload) turned into bytes on a pipe: the main thread waits on it with
    select() and does the work itself, which a signal cannot deadlock the way a lock taken in a handler can.
    signal.set_wakeup_fd writes each signal's number from the C handler, in whichever thread the kernel chose, so
    a signal that lands on a request thread still wakes the main thread's select()."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.signum: int | None = None
        self.on_reload: Callable[[], object] | None = None

    def install(self) -> None:
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        """The Python-level handler; the pipe's bytes (read in wait) carry the signals themselves."""

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop signal has arrived (it stays set); a reload asked for meanwhile is done here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.signum is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._read], [], [], left)
            if not readable:
                return False
            received = os.read(self._read, 64)
            stops = [n for n in received if n in (signal.SIGTERM, signal.SIGINT)]
            if stops:
                self.signum = stops[0]
            elif signal.SIGHUP in received and self.on_reload is not None:
                self.on_reload()
        return True


def _notify(message: str) -> None:
    try:
        notify(message)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)


def _wait_until_ready(app: App, stop: StopSignal, where: str) -> None:
    """Send READY=1 only when /health would answer 200; until then say why not, once per reason."""
    last = None
    while True:
        reason = app.unready_reason()
        if reason is None:
            app.mark_ready()
            log.info("ready: serving on %s", where)
            _notify(f"READY=1\nSTATUS=serving on {where}")
            return
        if reason != last:
            log.warning("not ready: %s", reason)
            _notify(f"STATUS=not ready: {reason}")
            last = reason
        if stop.wait(READY_POLL_SECONDS):
            return


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"webapp: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level)
    app = App(config)
    stop = StopSignal()
    stop.on_reload = app.reload
    stop.install()
    try:
        server = Server(app)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.bind, config.port, exc.strerror or exc)
        return 1
    host, port = server.server_address[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    release = app.release_facts()
    log.info("webapp %s starting: environment=%s port=%d listening on %s image=%s:%s commit=%s data_dir=%s features=%s",
             __version__, config.environment, port, where, release.get("IMAGE_NAME", "-"),
             release.get("IMAGE_VERSION", "-"), release.get("GIT_COMMIT", "-"), config.data_dir,
             ",".join(f"{k}={'on' if v else 'off'}" for k, v in config.features.items()) or "-")
    if not os.path.lexists(config.release_file):
        log.warning("release file %s does not exist: /version reports no image facts "
                    "(expected only in a role test or mid-bake)", config.release_file)
    try:
        app.items.remove_stale_temp_files()
    except OSError:
        pass  # the data directory is not usable yet; readiness reports it
    accept = threading.Thread(target=server.serve_forever, args=(ACCEPT_POLL_SECONDS,), name="http-accept")
    accept.start()
    try:
        _wait_until_ready(app, stop, where)
        stop.wait()
    finally:
        app.mark_stopping()
        name = signal.Signals(stop.signum).name if stop.signum else "error"
        log.info("stopping (%s): no new connections, finishing requests in flight", name)
        _notify("STOPPING=1")
        server.shutdown()  # serve_forever returns: nothing new is accepted
        server.server_close()  # closes the listening socket, then waits for request threads
        accept.join()
    log.info("stopped")
    return 0
