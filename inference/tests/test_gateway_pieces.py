"""Pure pieces of the gateway: the body checks and the usage event a stream carries."""

from __future__ import annotations

import json

import pytest

from inference.gateway import body
from inference.gateway.errors import GatewayError
from inference.gateway.upstream import Outcome, _events_end, _take_usage


@pytest.mark.parametrize(
    ("raw", "endpoint", "says"),
    [
        (b"", "chat/completions", "not valid JSON"),
        (b"\xff", "chat/completions", "not valid JSON"),
        (b'"text"', "chat/completions", "JSON object"),
        (b'{"model": 5, "messages": []}', "chat/completions", "`model` is required"),
        (b'{"model": "m", "messages": []}', "chat/completions", "`messages` is required"),
        (b'{"model": "m", "messages": ["hi"]}', "chat/completions", "`messages` is required"),
        (
            b'{"model": "m", "messages": [{}], "temperature": "hot"}',
            "chat/completions",
            "`temperature` must be a number",
        ),
        (b'{"model": "m", "messages": [{}], "n": true}', "chat/completions", "`n` must be an integer"),
        (b'{"model": "m", "messages": [{}], "stop": [1]}', "chat/completions", "`stop` must be a string or a list"),
        (b'{"model": "m", "prompt": []}', "completions", "`prompt` is required"),
    ],
)
def test_a_body_with_a_wrong_field_is_refused_naming_it(raw, endpoint, says):
    with pytest.raises(GatewayError) as raised:
        body.parse(raw, endpoint)
    assert raised.value.status == 400 and says in raised.value.message


def test_unknown_fields_and_nulls_pass_through_for_the_server_to_judge():
    parsed = body.parse(
        b'{"model": "m", "messages": [{}], "ignore_eos": true, "seed": null, "top_k": 10}', "chat/completions"
    )
    assert parsed["ignore_eos"] is True and parsed["seed"] is None


USAGE = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
TOKEN = b'data: {"id":"x","choices":[{"delta":{"content":"usage"}}]}\n\n'


def test_the_usage_event_is_read_and_removed_when_the_client_did_not_ask():
    outcome = Outcome(started=0)
    assert _take_usage(TOKEN + USAGE + b"data: [DONE]\n\n", outcome, strip=True) == TOKEN + b"data: [DONE]\n\n"
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (7, 3)


def test_the_usage_event_is_kept_when_the_client_asked_and_a_token_saying_usage_is_kept_always():
    outcome = Outcome(started=0)
    assert _take_usage(USAGE, outcome, strip=False) == USAGE and outcome.completion_tokens == 3
    assert _take_usage(TOKEN, Outcome(started=0), strip=True) == TOKEN


def test_only_complete_events_are_cut_off():
    assert _events_end(b"data: a\n\ndata: b") == len(b"data: a\n\n")
    assert _events_end(b"data: a") == 0
    assert _events_end(b"data: a\r\n\r\n") == len(b"data: a\r\n\r\n")
    assert json.loads(GatewayError(503, "x", "y").body())["error"] == {
        "message": "y", "type": "service_unavailable", "param": None, "code": "x",
    }  # fmt: skip
