"""An HTTP proxy on loopback in front of a store (the S3 server) that holds every request for a while before
passing it on, and logs what it passed: with it, an inspection (a handful of reads) lasts seconds, long enough
for a test to restart something while it runs, and the log shows what each job read and how often."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        server: SlowStore = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        time.sleep(server.delay)
        upstream = http.client.HTTPConnection(*server.upstream, timeout=30)
        # moto reads a bucket from a Host that is a name (virtual-host style): send it the upstream's.
        headers = dict(self.headers) | {"Host": f"{server.upstream[0]}:{server.upstream[1]}"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        reply = upstream.getresponse()
        data = reply.read()
        upstream.close()
        with server.lock:
            server.requests.append((self.command, self.path, self.headers.get("Range", "")))
        self.send_response(reply.status, reply.reason)
        for name, value in reply.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "server", "date", "content-length"):
                self.send_header(name, value)
        # A HEAD's length is the object's, as the store said; anything else's is the body passed on.
        length = reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, *args) -> None:
        pass


class SlowStore(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_url: str, *, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        host, _, port = upstream_url.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.delay = delay
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def reads_of(self, fragment: str) -> int:
        """How many GETs of a path containing `fragment` the store answered."""
        with self.lock:
            return sum(1 for method, path, _ in self.requests if method == "GET" and fragment in path)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
