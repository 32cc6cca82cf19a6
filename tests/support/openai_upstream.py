"""A small OpenAI-compatible server that streams as fast as it can: the
upstream of the gateway's tests and of its benchmark (bench/gateway.py).
It answers like vLLM: the same chunk shapes, the usage event only when
`stream_options.include_usage` asks for it, and 401 without its key.

Run it with `uvicorn tests.support.openai_upstream:app`; UPSTREAM_API_KEY
sets its key (default "upstream-key"), UPSTREAM_TOKENS the tokens a stream
sends when `max_tokens` does not say (default 32).

A request can ask for a misbehaviour with an extra body field the gateway
passes through, `"x_behaviour"`: "slow" (no answer for 30 s), "die"
(the connection drops after three tokens), "stall" (three tokens, then
silence for 30 s), "drip" (a token every 0.1 s). GET /stats says how many
streams ran to the end and how many were cut off by their client."""

from __future__ import annotations

import asyncio
import json
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

KEY = os.environ.get("UPSTREAM_API_KEY", "upstream-key")
TOKENS = int(os.environ.get("UPSTREAM_TOKENS", "32"))
STATS = {"completed": 0, "cancelled": 0, "requests": 0}
LAST: dict = {}


def _unauthorized(request: Request) -> Response | None:
    if request.headers.get("authorization") != f"Bearer {KEY}":
        return JSONResponse({"error": {"message": "Unauthorized", "type": "invalid_request_error"}}, status_code=401)
    return None


async def models(request: Request) -> Response:
    return _unauthorized(request) or JSONResponse({"object": "list", "data": []})


async def stats(request: Request) -> Response:
    return JSONResponse({**STATS, "last": LAST})


async def chat(request: Request) -> Response:
    return await _complete(request, chat=True)


async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


async def _complete(request: Request, *, chat: bool) -> Response:
    if (refused := _unauthorized(request)) is not None:
        return refused
    body = await request.json()
    STATS["requests"] += 1
    LAST.clear()
    LAST.update(body)
    behaviour = body.get("x_behaviour", "")
    tokens = int(body.get("max_tokens") or TOKENS)
    if behaviour == "slow":
        await asyncio.sleep(30)
    model, created, rid = body.get("model", ""), int(time.time()), "cmpl-bench"
    usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
    if not body.get("stream"):
        text = "tok " * tokens
        choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
        kind = "chat.completion" if chat else "text_completion"
        STATS["completed"] += 1
        return JSONResponse(
            {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice], "usage": usage}
        )

    head = f'{{"id":"{rid}","object":"{"chat.completion.chunk" if chat else "text_completion"}","created":{created},"model":{json.dumps(model)},"choices":'
    include_usage = (body.get("stream_options") or {}).get("include_usage")

    async def events():
        try:
            for i in range(tokens):
                if behaviour in ("die", "stall") and i == 3:
                    if behaviour == "stall":
                        await asyncio.sleep(30)
                    raise ConnectionAbortedError("told to die mid-stream")
                if behaviour == "drip":
                    await asyncio.sleep(0.1)
                delta = '{"content":"tok "}' if chat else None
                choice = (
                    f'[{{"index":0,"delta":{delta},"finish_reason":null}}]'
                    if chat
                    else '[{"index":0,"text":"tok ","finish_reason":null}]'
                )
                yield f"data: {head}{choice}}}\n\n"
            if include_usage:
                yield f'data: {head}[],"usage":{json.dumps(usage)}}}\n\n'
            yield "data: [DONE]\n\n"
            STATS["completed"] += 1
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            STATS["cancelled"] += 1
            raise

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/stats", stats),
    ]
)
