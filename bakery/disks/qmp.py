"""Send one command to a running qemu over its QMP unix socket (JSON lines: greeting, capabilities, command)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

MAX_SUN_PATH = 100  # sockaddr_un holds 108 bytes; run directories can be deeper than that


def connect(sock: socket.socket, path: Path) -> None:
    """Connect to a socket whose path may be too long for sockaddr_un, through /proc/self/fd of its directory."""
    if len(os.fsencode(path)) < MAX_SUN_PATH:
        sock.connect(str(path))
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def execute(path: Path, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """The reply to `command` ({"return": ...} or {"error": ...}); raises OSError when qemu does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        connect(sock, path)
        stream = sock.makefile("rwb")
        if "QMP" not in _reply(stream, greeting=True):
            raise OSError(f"{path} is not a QMP socket")
        for name in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": name}).encode() + b"\n")
            stream.flush()
            reply = _reply(stream)
        return reply


def _reply(stream: Any, greeting: bool = False) -> dict[str, Any]:
    """The next message that is not an asynchronous event."""
    while True:
        line = stream.readline()
        if not line:
            raise OSError("qemu closed its QMP socket")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise OSError(f"not a QMP message: {line[:80]!r}") from exc
        if not isinstance(message, dict):
            raise OSError(f"not a QMP message: {line[:80]!r}")
        if greeting or "event" not in message:
            return message
