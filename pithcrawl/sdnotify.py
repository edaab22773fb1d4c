"""systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING over $NOTIFY_SOCKET.

A few datagrams on a Unix socket, sent without ever blocking; outside systemd (no
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

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.address)
                # Never blocking: a supervisor whose queue is full (it is not reading)
                # loses this one datagram; it must not freeze the daemon's event loop.
                s.send("\n".join(fields).encode(), socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
