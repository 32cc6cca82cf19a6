"""A real TCP listener on loopback that counts the connections it accepts: how a test knows whether a
client reached an address it must not."""

from __future__ import annotations

import socket
import threading


class Listener:
    """A real TCP listener on a loopback address that counts the connections it accepts (and drops them)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.create_server((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1  # before the close the client sees
            conn.close()

    def close(self) -> None:
        self.sock.close()
