"""systemd's notify protocol (sd_notify) without libsystemd.

With Type=notify, systemd starts dependent units and the deploy moves on only
after READY=1, so the app sends it once it really serves, not when it forks.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one datagram to $NOTIFY_SOCKET; False when not run under a notify-aware manager.

    An address starting with '@' is in the abstract namespace. Raises OSError when
    the socket is set but unusable, so the caller can log it.
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # unset, or a transport this sketch does not speak (vsock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True
