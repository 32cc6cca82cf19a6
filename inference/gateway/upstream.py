"""Forwarding to a model server: one pooled aiohttp session per process, a
response passed through as the server sends it. A stream's chunks go to the
client as they arrive (several events read together go out together); the
gateway looks inside only for the usage event, and finds it with one byte
search per chunk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiohttp
from django.conf import settings

from inference.gateway import asgi
from inference.gateway.asgi import Send
from inference.gateway.errors import GatewayError

STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Proxies in front of the console (nginx) must not hold the stream back either.
    (b"x-accel-buffering", b"no"),
]


@dataclass
class Outcome:
    """What became of one forwarded request, for its usage record."""

    started: float
    status: int = 0
    first_at: float | None = None
    complete: bool = False  # the last byte went to the client: a disconnect from now on is the normal end
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def take_usage(self, usage: dict | None) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)


class Upstream:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=settings.PLUGBOARD_GATEWAY_CONNECT_TIMEOUT,
                    sock_read=settings.PLUGBOARD_GATEWAY_READ_TIMEOUT,
                ),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(
        self, *, url: str, key: str, body: bytes, stream: bool, strip_usage: bool, send: Send, outcome: Outcome
    ) -> None:
        """POSTs `body` to `url` with the server's `key` and relays the answer to `send`.
        Raises GatewayError (502, 504) when nothing was sent to the client yet."""
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        try:
            response = await self.session().post(url, data=body, headers=headers)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayError(504, "upstream_timeout", "The model server did not answer in time.") from None
        except aiohttp.ClientError as exc:
            raise GatewayError(
                502, "upstream_unreachable", f"The model server cannot be reached ({exc.__class__.__name__})."
            ) from None
        async with response:
            outcome.status = response.status
            if not stream or response.status != 200:
                await self._relay_whole(response, send, outcome)
            else:
                await self._relay_stream(response, send, outcome, strip_usage)

    async def _relay_whole(self, response: aiohttp.ClientResponse, send: Send, outcome: Outcome) -> None:
        try:
            payload = await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayError(504, "upstream_timeout", "The model server did not answer in time.") from None
        except aiohttp.ClientError:
            raise GatewayError(502, "upstream_failed", "The model server closed the connection mid-answer.") from None
        outcome.first_at = time.monotonic()
        if response.status == 200:
            try:
                outcome.take_usage(json.loads(payload).get("usage"))
            except (ValueError, AttributeError):
                pass
        outcome.complete = True  # the whole answer is in hand: a client leaving now cancels nothing
        content_type = response.headers.get("Content-Type", "application/json").encode()
        await asgi.send_whole(send, response.status, payload, content_type=content_type)

    async def _relay_stream(
        self, response: aiohttp.ClientResponse, send: Send, outcome: Outcome, strip_usage: bool
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        pending = b""  # the start of an event whose end has not arrived yet
        try:
            async for chunk in response.content.iter_any():
                if outcome.first_at is None:
                    outcome.first_at = time.monotonic()
                data = pending + chunk if pending else chunk
                end = _events_end(data)
                if end == 0:
                    pending = data
                    continue
                out, pending = data[:end], data[end:]
                if b'"usage"' in out:
                    out = _take_usage(out, outcome, strip_usage)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except (TimeoutError, aiohttp.ServerTimeoutError):
            outcome.status, outcome.complete = 504, True  # a client that leaves after the error event ends normally
            error = GatewayError(504, "upstream_timeout", "The model server stopped sending mid-stream.")
            await send({"type": "http.response.body", "body": error.sse_event(), "more_body": True})
        except aiohttp.ClientError:
            outcome.status, outcome.complete = 502, True
            error = GatewayError(502, "upstream_failed", "The model server closed the connection mid-stream.")
            await send({"type": "http.response.body", "body": error.sse_event(), "more_body": True})
        else:
            if pending:
                await send({"type": "http.response.body", "body": pending, "more_body": True})
        outcome.complete = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _events_end(data: bytes) -> int:
    """The offset just past the last complete server-sent event in `data`; 0 if none is complete."""
    end = data.rfind(b"\n\n")
    if end >= 0:
        return end + 2
    end = data.rfind(b"\r\n\r\n")
    return end + 4 if end >= 0 else 0


def _take_usage(events: bytes, outcome: Outcome, strip: bool) -> bytes:
    """Notes the usage a stream reports; with `strip`, drops the usage-only event
    (no choices) the gateway asked for and the client did not."""
    kept = []
    for event in events.split(b"\n\n"):
        if b'"usage"' in event and event.startswith(b"data: "):
            try:
                message = json.loads(event[6:])
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("usage"):
                outcome.take_usage(message["usage"])
                if strip and not message.get("choices"):
                    continue
        kept.append(event)
    return b"\n\n".join(kept)
