"""Checks of a request body before it goes upstream: UTF-8 JSON (RFC 8259: no NaN or
Infinity, no other encoding), an object, and the fields the gateway or any client
relies on of the right type and within what any model server can take. Everything
else is the model server's to judge, unknown fields included: vLLM's own sampling
extensions (top_k, min_p, guided_json, ...) are unknown to OpenAI's API."""

from __future__ import annotations

import json
import math

from inference.gateway.errors import GatewayError

_NUMBER = "a number"
_INTEGER = "an integer"
_COUNT = "an integer of at least 1"
_TEXTS = "a string or a list of strings"

# Integers a model server reads into 64 bits (vLLM's seed is a torch long): anything beyond is refused here,
# so that no server is asked for 10**40 tokens.
INT64 = (-(2**63), 2**63 - 1)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _texts(v) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))


# Field: (what it must be, a check of its type, the least value it may have). None is accepted for
# every optional field.
_COMMON = {
    "stream": ("true or false", lambda v: isinstance(v, bool), None),
    "stream_options": ("an object", lambda v: isinstance(v, dict), None),
    "max_tokens": (_COUNT, _integer, 1),
    "max_completion_tokens": (_COUNT, _integer, 1),
    "n": (_COUNT, _integer, 1),
    "seed": (_INTEGER, _integer, None),
    "top_k": (_INTEGER, _integer, None),
    "temperature": (_NUMBER, _number, None),
    "top_p": (_NUMBER, _number, None),
    "presence_penalty": (_NUMBER, _number, None),
    "frequency_penalty": (_NUMBER, _number, None),
    "stop": (_TEXTS, _texts, None),
    "user": ("a string", lambda v: isinstance(v, str), None),
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
MAX_MODEL_ID = 256  # far beyond `<deployment>:<served name>`; longer is no model id


def _refuse(code: str, message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, code, message, param=param)


def _constant(name: str):
    raise _refuse("invalid_json", f"The request body is not valid JSON: {name} is not a JSON number.")


def _integer_text(text: str) -> int:
    # Python reads integers of up to 4300 digits, in time that grows with the square of the digits: one
    # far longer than any 64-bit number is refused unread (the fields below are then checked for range).
    if len(text) > 100:
        raise _refuse("invalid_value", f"The number {text[:24]}… is too large for any model server.")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _refuse("invalid_value", f"The number {text[:24]} is too large for any model server.")
    return value


def _decode(raw: bytes):
    try:
        text = raw.decode("utf-8")  # not json.loads(bytes): that also reads UTF-16 and UTF-32, which servers do not
    except UnicodeDecodeError:
        raise _refuse("invalid_json", "The request body is not valid JSON: it is not UTF-8 text.") from None
    try:
        return json.loads(text, parse_constant=_constant, parse_int=_integer_text, parse_float=_finite)
    except ValueError as exc:
        raise _refuse("invalid_json", f"The request body is not valid JSON ({exc}).") from None
    except RecursionError:  # arrays in arrays in arrays...: no request is shaped like that
        raise _refuse("invalid_json", "The request body is nested too deeply.") from None


def _check_model(model) -> None:
    if not isinstance(model, str) or not model:
        raise _refuse("invalid_type", "`model` is required: a model id as /v1/models lists it.", "model")
    # Model ids are printable text: a NUL or a lone surrogate could not even be written to the usage records.
    if len(model) > MAX_MODEL_ID or not model.isprintable() or not _encodable(model):
        raise _refuse("invalid_type", "`model` must be a model id as /v1/models lists it.", "model")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_number(field: str, value, least: int | None) -> None:
    if _integer(value):
        low, high = INT64 if least is None else (least, INT64[1])
        if not low <= value <= high:
            raise _refuse("invalid_value", f"`{field}` must be between {low} and {high}.", field)


def parse(raw: bytes, endpoint: str) -> dict:
    """Returns the request object of `raw`, a body for `endpoint` ("chat/completions"
    or "completions"); raises a 400 GatewayError naming the field that is wrong."""
    body = _decode(raw)
    if not isinstance(body, dict):
        raise _refuse("invalid_json", "The request body must be a JSON object.")
    _check_model(body.get("model"))
    for field, (what, ok) in _REQUIRED[endpoint].items():
        if field not in body or not ok(body[field]):
            raise _refuse("invalid_type", f"`{field}` is required and must be {what}.", field)
    for field, (what, ok, least) in _COMMON.items():
        value = body.get(field)
        if value is None:
            continue
        if not ok(value):
            raise _refuse("invalid_type", f"`{field}` must be {what}.", field)
        _check_number(field, value, least)
    return body
