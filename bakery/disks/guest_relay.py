"""Relay one guest TCP connection to a loopback port: what qemu's `guestfwd=...-cmd:` runs per connection.

A guestfwd to a `tcp:` character device opens one host connection when qemu starts (and refuses to start when
nothing listens yet) and pours every guest connection into that one stream; an HTTP client such as the guest's
IMDSv2 client opens a connection per request, so each needs its own. qemu starts this script once per guest
connection with the connection as its stdin/stdout. Run by path with only the standard library (bakery need not
be importable from qemu's working directory); it never writes to stderr, which is the guest's connection too.

Usage: python3 guest_relay.py PORT
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def relay(guest: socket.socket, upstream: socket.socket) -> None:
    """Copy both ways until both sides have finished sending; a half-close is passed on as one."""
    selector = selectors.DefaultSelector()
    selector.register(guest, selectors.EVENT_READ, upstream)
    selector.register(upstream, selectors.EVENT_READ, guest)
    open_sides = 2
    while open_sides:
        for key, _ in selector.select():
            source, target = key.fileobj, key.data
            assert isinstance(source, socket.socket)
            data = source.recv(65536)
            if data:
                target.sendall(data)
                continue
            selector.unregister(source)
            open_sides -= 1
            try:
                target.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # stderr is the guest's connection too: nothing may reach it
    try:
        port = int(argv[1])
        guest = socket.socket(fileno=os.dup(0))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as upstream:
            upstream.settimeout(None)
            relay(guest, upstream)
    except (OSError, ValueError, IndexError):
        return 1  # the guest sees its connection closed
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
