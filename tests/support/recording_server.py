"""An HTTP server on loopback that answers every request with one fixed status and records what it was
sent (method, path, headers), so a test can see which credentials a client really put on the wire."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


class RecordingServer:
    def __init__(self, *, status: int = 404) -> None:
        self.requests: list[Recorded] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                recorder.requests.append(Recorded(self.command, self.path, dict(self.headers.items())))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def sent(self, text: str) -> bool:
        """Whether any recorded request carried `text` in a header value or its path."""
        return any(text in r.path or any(text in v for v in r.headers.values()) for r in self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
