"""The OpenAI-compatible gateway, `/v1/...`: a plain ASGI app mounted beside
Django in the same process (config/asgi.py). Django's request cycle (its
middleware, the URL resolver, a sync-to-async hop per request) costs more
per request than this whole path; the gateway needs none of it, and reads
the database only through its cache (catalog.py).

A request: read the body (bounded), check the key, resolve the model id to
a route, forward to the model server with the deployment's own key, relay
the answer as it comes, and leave a usage record to be written later."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from django.conf import settings
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts.services import api_token_authenticate
from config import ratelimit
from inference import selectors
from inference.gateway import asgi
from inference.gateway import body as request_body
from inference.gateway.catalog import Catalog, read_db
from inference.gateway.errors import GatewayError
from inference.gateway.metrics import GatewayMetrics
from inference.gateway.upstream import Outcome, Upstream
from inference.gateway.usage import UsageWriter
from inference.selectors import KeyGrant, Route

log = logging.getLogger(__name__)

ENDPOINTS = {"/v1/chat/completions": "chat/completions", "/v1/completions": "completions"}
CLIENT_CLOSED = 499  # the status a usage record gets when the client went away (nginx's convention)


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass(frozen=True)
class Caller:
    """Who sends a request: an application with a gateway key, or a signed-in
    person in the playground (any of their workspaces, every deployment)."""

    workspace_ids: tuple[int, ...]
    key: KeyGrant | None = None
    user_id: int | None = None

    def allows(self, route: Route) -> bool:
        return self.key is None or self.key.allows(route.deployment_id)


class Gateway:
    def __init__(self) -> None:
        self.catalog = Catalog()
        self.upstream = Upstream()
        self.usage = UsageWriter()
        self.metrics = GatewayMetrics()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        self.catalog.watch()
        self.usage.start()
        try:
            await self.handle(scope, receive, send)
        except GatewayError as error:
            await _respond_error(send, error)
        except ClientGone:
            pass  # it left while sending its request: nothing was asked of a model server yet

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.usage.flush()
                await self.upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/metrics":
            await self.serve_metrics(scope, receive, send)
            return
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                raise GatewayError(405, "method_not_allowed", f"{path} answers GET only.")
            caller = await self.authenticate_within_limits(scope)
            routes = await self.routes_for(caller)
            if path == "/v1/models":
                listed = [_model_object(r) for r in routes.values() if r.available and caller.allows(r)]
                await _respond(send, 200, {"object": "list", "data": listed})
                return
            route = self.resolve(caller, routes, path.removeprefix("/v1/models/"))
            await _respond(send, 200, _model_object(route))
            return
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            raise GatewayError(
                404, "unknown_url", f"The gateway has no {path}; it serves /v1/models, {', '.join(ENDPOINTS)}."
            )
        if method != "POST":
            raise GatewayError(405, "method_not_allowed", f"{path} answers POST only.")
        caller = await self.authenticate_within_limits(scope)
        _check_content_type(scope)
        raw = await _read_body(scope, receive)
        await self.complete(scope, receive, send, caller=caller, raw=raw, endpoint=endpoint)

    async def routes_for(self, caller: Caller) -> dict[str, Route]:
        if len(caller.workspace_ids) == 1:
            return await self.catalog.routes(caller.workspace_ids[0])
        routes: dict[str, Route] = {}
        for workspace_id in caller.workspace_ids:
            routes.update(await self.catalog.routes(workspace_id))
        return routes

    async def authenticate_within_limits(self, scope) -> Caller:
        """The caller, once its address and then its key (or user) are within their rate limits (429 with
        Retry-After otherwise). The address is counted before the key is looked at, so that guessing keys
        is limited too."""
        address = (scope.get("client") or ("",))[0]
        if (wait := await ratelimit.ahit(ratelimit.limit("gateway.address"), address)) is not None:
            raise GatewayError(
                429, "rate_limit_exceeded", f"Too many requests from this address; retry in {wait} s.", retry_after=wait
            )
        caller = await self.authenticate(scope)
        identity = f"key:{caller.key.key_id}" if caller.key is not None else f"user:{caller.user_id}"
        if (wait := await ratelimit.ahit(ratelimit.limit("gateway.key"), identity)) is not None:
            raise GatewayError(
                429, "rate_limit_exceeded", f"Too many requests with this key; retry in {wait} s.", retry_after=wait
            )
        return caller

    async def authenticate(self, scope) -> Caller:
        sent, raw = asgi.bearer(scope)
        if not sent:
            if (caller := await self.session_caller(scope)) is not None:
                return caller
            raise GatewayError(
                401, "missing_api_key", "Send a key: `Authorization: Bearer pbi_…` (create one on the Keys page)."
            )
        if not raw:
            raise GatewayError(401, "invalid_api_key", "Send the key as `Authorization: Bearer <key>`.")
        grant = await self.catalog.grant(raw)
        if grant is None:
            raise GatewayError(401, "invalid_api_key", "This key is not valid.")
        if grant.revoked_at is not None:
            raise GatewayError(401, "revoked_api_key", "This key was revoked.")
        if grant.expires_at is not None and grant.expires_at <= timezone.now():
            raise GatewayError(401, "expired_api_key", f"This key expired at {grant.expires_at:%Y-%m-%d %H:%M} UTC.")
        return Caller(workspace_ids=(grant.workspace_id,), key=grant)

    async def session_caller(self, scope) -> Caller | None:
        """The playground's caller: a signed-in session, with the CSRF cookie's
        value repeated in the X-CSRFToken header (a page of another site can send
        the cookies but can neither read them nor set that header)."""
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load((asgi.header(scope, b"cookie") or b"").decode("latin-1"))
        session = cookies.get(settings.SESSION_COOKIE_NAME)
        if session is None:
            return None
        csrf_cookie = cookies.get(settings.CSRF_COOKIE_NAME)
        csrf_header = (asgi.header(scope, b"x-csrftoken") or b"").decode("latin-1")
        if csrf_cookie is None or not csrf_header or not constant_time_compare(csrf_cookie.value, csrf_header):
            raise GatewayError(403, "csrf_failed", "Signed-in requests need the X-CSRFToken header; reload the page.")
        member = await read_db(selectors.session_member, session.value)
        if member is None:
            raise GatewayError(401, "session_expired", "Your sign-in has expired; sign in again.")
        user_id, workspace_ids = member
        return Caller(workspace_ids=workspace_ids, user_id=user_id)

    @staticmethod
    def resolve(caller: Caller, routes: dict[str, Route], model_id: str) -> Route:
        """The route of `model_id` for `caller`; another workspace's model is unknown (404), never forbidden."""
        route = routes.get(model_id)
        if route is None:
            raise GatewayError(404, "model_not_found", f"The model `{model_id}` does not exist or is not served now.")
        if not caller.allows(route):
            raise GatewayError(403, "model_not_allowed", f"This key may not use `{model_id}`.")
        return route

    async def complete(self, scope, receive, send, *, caller: Caller, raw: bytes, endpoint: str) -> None:
        outcome = Outcome(started=time.monotonic())
        request = request_body.parse(raw, endpoint)
        stream = bool(request.get("stream"))
        route: Route | None = None
        try:
            route = self.resolve(caller, await self.routes_for(caller), request["model"])
            if not route.available:
                raise GatewayError(503, "model_not_ready", route.unavailable, retry_after=route.retry_after)
            strip_usage = False
            if stream and not (request.get("stream_options") or {}).get("include_usage"):
                # Usage is counted from what vLLM reports; its final usage event is removed again below.
                request["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
                raw, strip_usage = json.dumps(request).encode(), True
            await self._forward_until_disconnect(
                receive, send, url=route.upstream + "/v1/" + endpoint, key=route.upstream_key, body=raw,
                stream=stream, strip_usage=strip_usage, outcome=outcome,
            )  # fmt: skip
        except GatewayError as error:
            outcome.status = error.status
            raise
        finally:
            self.record(caller, route, request["model"], endpoint, stream, outcome)

    async def _forward_until_disconnect(self, receive, send, *, outcome: Outcome, **forward) -> None:
        """Forwards, and cancels the upstream request when the client goes away:
        closing the upstream connection makes vLLM abort the generation."""
        relay = asyncio.current_task()
        disconnected = False

        async def watch() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            if not outcome.complete:
                disconnected = True
                relay.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.upstream.forward(send=send, outcome=outcome, **forward)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            relay.uncancel()
            outcome.status = CLIENT_CLOSED
        finally:
            watcher.cancel()

    def record(self, caller: Caller, route: Route | None, model: str, endpoint: str, stream: bool, outcome: Outcome):
        duration = time.monotonic() - outcome.started
        ttft = outcome.first_at - outcome.started if outcome.first_at and stream else None
        workspace_id = route.workspace_id if route else caller.workspace_ids[0] if caller.workspace_ids else None
        if workspace_id is None:
            return  # a signed-in person of no workspace asked for a model that cannot exist for them
        # Fields only: the rows are built in the writer's thread, off the event loop.
        self.usage.add(dict(
            created_at=timezone.now(), workspace_id=workspace_id, key_id=caller.key.key_id if caller.key else None,
            user_id=caller.user_id, deployment_id=route.deployment_id if route else None, model=model[:130],
            adapter=route.adapter if route else "", endpoint=endpoint, stream=stream, status=outcome.status,
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
            ttft_ms=ttft * 1000 if ttft is not None else None, duration_ms=duration * 1000,
        ))  # fmt: skip
        self.metrics.observe(
            deployment=(route.parent or route.model_id) if route else "", model=route.model_id if route else "",
            status=outcome.status, duration=duration, ttft=ttft,
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
        )  # fmt: skip

    async def serve_metrics(self, scope, receive, send) -> None:
        """The console's /metrics, for Prometheus, with a personal API token of an administrator."""
        self.usage.start()
        _, raw = asgi.bearer(scope)
        if not raw:
            raise GatewayError(
                401, "missing_token", "Send an administrator's API token: `Authorization: Bearer pbt_…`."
            )
        user = await read_db(lambda: api_token_authenticate(raw=raw))
        if user is None:
            raise GatewayError(401, "invalid_token", "This API token is unknown or was revoked.")
        if not user.is_staff:
            raise GatewayError(403, "not_an_administrator", "Only an administrator's token may read /metrics.")
        body = self.metrics.render(usage_backlog=self.usage.backlog, usage_dropped=self.usage.dropped).encode()
        await asgi.send_whole(send, 200, body, content_type=b"text/plain; version=0.0.4; charset=utf-8")


def _check_content_type(scope) -> None:
    """Refuses (415) a body declared as anything but JSON: form data or text is a client's mistake, and vLLM
    (FastAPI) would refuse it too. No Content-Type at all is taken as JSON, as vLLM takes it."""
    declared = (asgi.header(scope, b"content-type") or b"").partition(b";")[0].strip().lower()
    if declared and declared != b"application/json" and not declared.endswith(b"+json"):
        raise GatewayError(
            415, "unsupported_media_type",
            f"Send the request body as JSON (Content-Type: application/json), not {declared.decode('latin-1')}.",
        )  # fmt: skip


async def _read_body(scope, receive) -> bytes:
    """The request body, whole, within the size limit and the body timeout."""
    seconds = settings.PLUGBOARD_GATEWAY_BODY_TIMEOUT
    try:
        async with asyncio.timeout(seconds):
            return await _receive_body(scope, receive)
    except TimeoutError:
        raise GatewayError(
            408, "request_timeout", f"The request body did not arrive within {seconds:g} s; send it whole and promptly."
        ) from None


async def _receive_body(scope, receive) -> bytes:
    limit = settings.PLUGBOARD_GATEWAY_MAX_BODY_BYTES
    declared = asgi.header(scope, b"content-length")
    too_large = GatewayError(
        413, "request_too_large", f"The request body is over the gateway's limit of {limit} bytes."
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _model_object(route: Route) -> dict:
    model = {"id": route.model_id, "object": "model", "created": route.created, "owned_by": route.owned_by}
    if route.parent:
        model["parent"] = route.parent
    return model


async def _respond(send, status: int, payload: dict) -> None:
    await asgi.send_whole(send, status, json.dumps(payload).encode())


async def _respond_error(send, error: GatewayError) -> None:
    headers = [(b"retry-after", str(error.retry_after).encode())] if error.retry_after else []
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    with contextlib.suppress(Exception):  # the client may be gone already
        await asgi.send_whole(send, error.status, error.body(), headers=headers)
