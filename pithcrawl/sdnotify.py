"""systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING over $NOTIFY_SOCKET.

A few datagrams on a Unix socket, sent without blocking for long (a change of state
waits up to `STATE_WAIT` for room, a ping not at all); outside systemd (no
NOTIFY_SOCKET) every call does nothing. A failure to notify is logged by the caller's
choice, never raised: the service must not die, nor stop, because its supervisor's
socket hiccupped.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from datetime import timedelta


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog = timedelta(microseconds=int(usec)) if watched else None

    def send(self, *fields: str, wait: float = 0.0) -> bool:
        """One datagram; False when it could not be sent. `wait`: how long a full queue
        (a supervisor not reading) may hold it; 0 drops it at once."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.settimeout(wait or None)
                s.connect(self.address)
                flags = 0 if wait else socket.MSG_DONTWAIT
                s.send("\n".join(fields).encode(), flags)
        except OSError:
            return False
        return True

    # A change of state waits a little for a full queue (systemd waits for READY=1 after
    # a reload, and would give up on the service); pings and status lines never wait:
    # the next one will do, and the daemon's event loop must not stop for them.

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []), wait=STATE_WAIT)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        usec = f"MONOTONIC_USEC={time.monotonic_ns() // 1000}"
        return self.send("RELOADING=1", usec, wait=STATE_WAIT)

    def stopping(self) -> bool:
        return self.send("STOPPING=1", wait=STATE_WAIT)


#: How long a READY, RELOADING or STOPPING may wait for room in a full notify queue.
STATE_WAIT = 2.0
