"""The few ASGI chores every gateway answer shares: reading a header, the bearer token, and
sending a whole (not streamed) body with its type and length."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

Send = Callable[[dict], Awaitable[None]]


def header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def bearer(scope) -> tuple[bool, str]:
    """(whether an Authorization header came, the token it bears: "" when it is not `Bearer <token>`)."""
    value = header(scope, b"authorization")
    if not value:
        return False, ""
    scheme, _, token = value.decode("latin-1").partition(" ")
    return True, token.strip() if scheme.lower() == "bearer" else ""


async def send_whole(
    send: Send, status: int, body: bytes, *, content_type: bytes = b"application/json", headers: Iterable = ()
) -> None:
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
