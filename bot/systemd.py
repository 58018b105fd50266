"""Tell systemd how start-up goes (``Type=notify``): a datagram to ``$NOTIFY_SOCKET``.

The protocol is one ``KEY=value`` line per datagram field (sd_notify(3)); a socket write
needs no library. Outside systemd there is no socket and nothing is sent.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)


def notify(address: str | None, *fields: str) -> bool:
    """Send ``fields`` ("READY=1", "STATUS=…") to systemd; False when there is no socket."""
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as e:  # systemd gone, or a socket we may not write: start-up goes on
        log.warning("could not notify systemd at %s (%s)", address.lstrip("\0"),
                    e.strerror or type(e).__name__)
        return False
    return True
