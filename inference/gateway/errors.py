"""The gateway's errors, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, where
`param` names the request field that is wrong, if one is."""

from __future__ import annotations

import json


class GatewayError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        self.param = param

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "server_error")

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        ).encode()

    def sse_event(self) -> bytes:
        """The error as a server-sent event, for a stream that already began."""
        return b"data: " + self.body() + b"\n\n"


TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
