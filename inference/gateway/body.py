"""Checks of a request body before it goes upstream: JSON, an object, and the
fields the gateway or any client relies on of the right type. Everything else
is the model server's to judge."""

from __future__ import annotations

import json

from inference.gateway.errors import GatewayError

_NUMBER = "a number"
_INTEGER = "an integer"
_TEXTS = "a string or a list of strings"

# Field: (what it must be, a check). None is accepted for every optional field.
_COMMON = {
    "stream": ("true or false", lambda v: isinstance(v, bool)),
    "stream_options": ("an object", lambda v: isinstance(v, dict)),
    "max_tokens": (_INTEGER, lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "max_completion_tokens": (_INTEGER, lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "n": (_INTEGER, lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "seed": (_INTEGER, lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "top_k": (_INTEGER, lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "temperature": (_NUMBER, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "top_p": (_NUMBER, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "presence_penalty": (_NUMBER, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "frequency_penalty": (_NUMBER, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "stop": (_TEXTS, lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))),
    "user": ("a string", lambda v: isinstance(v, str)),
}
_REQUIRED = {
    "chat/completions": {
        "messages": (
            "a non-empty list of message objects",
            lambda v: isinstance(v, list) and bool(v) and all(isinstance(m, dict) for m in v),
        ),
    },
    "completions": {
        "prompt": (_TEXTS, lambda v: isinstance(v, str) or (isinstance(v, list) and bool(v))),
    },
}


def parse(raw: bytes, endpoint: str) -> dict:
    """Returns the request object of `raw`, a body for `endpoint` ("chat/completions"
    or "completions"); raises a 400 GatewayError naming the field that is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise GatewayError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "invalid_json", "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "invalid_type", "`model` is required: a model id as /v1/models lists it.")
    for field, (what, ok) in _REQUIRED[endpoint].items():
        if field not in body or not ok(body[field]):
            raise GatewayError(400, "invalid_type", f"`{field}` is required and must be {what}.")
    for field, (what, ok) in _COMMON.items():
        value = body.get(field)
        if value is not None and not ok(value):
            raise GatewayError(400, "invalid_type", f"`{field}` must be {what}.")
    return body
