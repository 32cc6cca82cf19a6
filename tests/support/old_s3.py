"""An older S3-compatible store for tests: a proxy in front of a real S3
server (moto) that answers ListObjectsV2 with 501 NotImplemented, as stores
that predate it do, and passes every other request through."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
    b"<Message>A header you provided implies functionality that is not implemented</Message></Error>"
)


class OldS3Store:
    def __init__(self, upstream_url: str) -> None:
        self.upstream = upstream_url.rstrip("/")
        self.listings_refused = 0
        store = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                if "list-type=2" in self.path:
                    store.listings_refused += 1
                    self._answer(501, {"Content-Type": "application/xml"}, NOT_IMPLEMENTED)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                upstream = requests.request(
                    self.command,
                    store.upstream + self.path,
                    headers=dict(self.headers.items()),  # Host too: it is part of what was signed
                    data=self.rfile.read(length) if length else None,
                    timeout=10,
                )
                keep = {"Content-Type", "ETag", "Last-Modified", "x-amz-request-id", "x-amz-bucket-region"}
                headers = {k: v for k, v in upstream.headers.items() if k in keep}
                self._answer(upstream.status_code, headers, upstream.content)

            def _answer(self, status: int, headers: dict, body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
