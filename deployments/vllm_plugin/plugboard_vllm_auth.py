"""The guard in front of every route of a model server the console starts.

vLLM's own `--api-key` guards only the paths under /v1 (and a few other
prefixes): /health, /metrics, /tokenize, /invocations, /openapi.json and the
rest answer anyone who can reach the port, and teams share nodes. So the
console passes no `--api-key` and instead puts this ASGI middleware outermost
(`--middleware plugboard_vllm_auth.ServerKeyMiddleware`, vllm_args.build_command):
every HTTP request and websocket must carry `Authorization: Bearer <the
deployment's key>`, whatever its path or method.

The key comes from the server's environment (KEY_VARIABLE), never its command
line, which `ps` shows to every user of the node. With no key there the
middleware refuses everything: it is the only guard, so it fails closed.

Standard library only: it runs in the vLLM runtime's Python, and the console's
tests import it too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os

KEY_VARIABLE = "PLUGBOARD_SERVER_KEY"
IMPORT_PATH = "plugboard_vllm_auth.ServerKeyMiddleware"
# Under vLLM's logger, so the lines carry its format and land in the server's log.
log = logging.getLogger("vllm.plugboard_vllm_auth")

# A websocket refused before it is accepted: the server answers the handshake with 403.
POLICY_VIOLATION = 1008


def _digest(value: bytes) -> bytes:
    # Comparing digests keeps the comparison's time independent of the key's length too.
    return hashlib.sha256(value).digest()


def _error_body(message: str, code: str) -> bytes:
    """An error in OpenAI's shape, as the gateway's own errors are."""
    return json.dumps(
        {"error": {"message": message, "type": "authentication_error", "param": None, "code": code}}
    ).encode()


MISSING = _error_body(
    "This model server answers only requests that carry its deployment's key: send `Authorization: Bearer <key>`.",
    "missing_api_key",
)
WRONG = _error_body("This is not this model server's key.", "invalid_api_key")
UNSET = _error_body(
    f"This model server was started without its key ({KEY_VARIABLE} is not set), so it refuses every request. "
    "Restart the deployment from the console.",
    "server_key_not_set",
)


class ServerKeyMiddleware:
    """Passes on only the requests and websockets whose bearer token is `key` (by default
    the KEY_VARIABLE environment variable); refuses the rest with 401 (503 when there is
    no key) and closes refused websockets. Lifespan events always pass. Logs once, when it
    is built, whether it guards with a key or refuses everything."""

    def __init__(self, app, key: str | None = None) -> None:
        self.app = app
        key = os.environ.get(KEY_VARIABLE, "") if key is None else key
        self.expected = _digest(key.encode()) if key else None
        if self.expected is None:
            log.error("%s is not set: this server refuses every request.", KEY_VARIABLE)
        else:
            log.info("Every route of this server requires the deployment's key.")

    def allows(self, headers) -> bool | None:
        """Whether `headers` (an ASGI scope's) carry the key; None when they carry no bearer token at all."""
        value = next((v for k, v in headers if k.lower() == b"authorization"), b"")
        scheme, _, token = value.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        return hmac.compare_digest(_digest(token), self.expected)

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        allowed = self.expected is not None and self.allows(scope.get("headers", ()))
        if allowed:
            await self.app(scope, receive, send)
        elif kind == "http":
            await self.refuse(scope, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})
        # Any other kind of scope is not served at all.

    async def refuse(self, scope, send) -> None:
        if self.expected is None:
            status, body = 503, UNSET
        else:
            status, body = 401, MISSING if self.allows(scope.get("headers", ())) is None else WRONG
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="model server"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
