"""A TCP proxy on loopback that counts the bytes a server sends back, so a
test can measure what a client really downloaded instead of trusting the
client's own count. It can also turn slow on command (`slow_down`): after a
number of bytes, what the server sends drips through a byte at a time, or
stops coming at all, as from a store or a link that fails without closing."""

from __future__ import annotations

import socket
import threading
import time


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._slow_after: int | None = None  # bytes down (since slow_down) after which it drips or stalls
        self._drip_every: float | None = None  # seconds between single bytes; None: nothing more at all
        self.slowed_at: float | None = None  # time.time() when the first byte was held back
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.bytes_down = 0

    def slow_down(self, *, after: int, drip_every: float | None) -> None:
        """From `after` more bytes on (all connections together), sends one byte every `drip_every` seconds,
        or, with None, nothing more: each connection stays open and silent until its client gives up."""
        with self._lock:
            self._slow_after = self.bytes_down + after
            self._drip_every = drip_every
            self.slowed_at = None

    def close(self) -> None:
        self._stopped = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            ended = threading.Event()
            threading.Thread(target=self._pipe, args=(client, upstream, False, ended), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True, ended), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool, ended: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    data = self._count(data, dst, ended)
                    if data is None:
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            ended.set()
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _count(self, data: bytes, dst: socket.socket, ended: threading.Event) -> bytes | None:
        """Counts `data` and returns what may still be sent; what is held back it drips or swallows here, and
        returns None once the connection ended meanwhile."""
        with self._lock:
            allowed = len(data) if self._slow_after is None else max(0, self._slow_after - self.bytes_down)
            self.bytes_down += len(data)
            drip_every = self._drip_every
            if allowed < len(data) and self.slowed_at is None:
                self.slowed_at = time.time()
        if allowed >= len(data):
            return data
        dst.sendall(data[:allowed])
        held = data[allowed:]
        # The client closing its side ends the other pipe, which sets `ended`.
        if drip_every is None:
            ended.wait()
            return None
        for i in range(len(held)):
            if ended.wait(drip_every):
                return None
            dst.sendall(held[i : i + 1])
        return b""  # all dripped: the next bytes from the server drip too
