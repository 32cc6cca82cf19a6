from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote_to_bytes

from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired
from django.http import HttpResponse, JsonResponse

from config import ratelimit

# What a page's form may be sent as: what browsers send (the console's forms take no files, but multipart is
# still a form).
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class LoginRequiredMiddleware(DjangoLoginRequired):
    """Every page requires an account. The API authenticates on its own (tokens or session, in DRF) and
    answers 401/403 as JSON rather than a login redirect."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


class PageInputMiddleware:
    """Pages take well-formed input only (page_input_refusal). Listed before Django's CSRF check, which reads
    the form: a multipart body is a stream that can be read only once, and this reads it whole first. The
    API parses its own bodies (DRF) and answers its own errors."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path_info.startswith("/api/") and (refusal := page_input_refusal(request)) is not None:
            return refusal
        return self.get_response(request)


def page_input_refusal(request) -> HttpResponse | None:
    """The answer to a page request whose input no browser sends, or None: 415 for a body that is not
    form data, 400 for a query or form that is not UTF-8. Django would otherwise read such input with
    replacement characters (a name saved as "\ufffd\ufffd"), or ignore a JSON body and show the empty form.
    Parsing the query and the form here also turns too many fields, an oversized body and a broken
    multipart body into Django's 400 before any view runs."""
    content_type = request.content_type or ""
    # Read whole (RequestBodyLimit caps it) before Django parses the form: pages take no files, so a multipart
    # body is text throughout too, and Django would read each part's bytes as UTF-8 with replacement characters.
    body = request.body
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and content_type not in FORM_TYPES and body:
        return _refuse(
            415, "Pages take form data (application/x-www-form-urlencoded); the REST API, under /api/v1/, takes JSON."
        )
    request.GET, request.POST  # noqa: B018 (parsed for Django's own checks, which raise a 400)
    scope = getattr(request, "scope", None)  # ASGI: the raw bytes; WSGI: Latin-1 text of the raw bytes
    query = (
        scope.get("query_string", b"")
        if scope is not None
        else request.META.get("QUERY_STRING", "").encode("latin-1", "replace")
    )
    form = body if content_type in FORM_TYPES else b""
    form_is_utf8 = _is_utf8(form) if content_type == "multipart/form-data" else _is_utf8_form(form)
    if not (_is_utf8_form(query) and form_is_utf8):
        return _refuse(400, "The request's query or form is not UTF-8 text.")
    return None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_utf8_form(encoded: bytes) -> bool:
    """Whether each name and value of the urlencoded `encoded` is UTF-8 once unquoted."""
    try:
        for pair in encoded.split(b"&"):
            for part in pair.split(b"=", 1):
                unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _refuse(status: int, message: str) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


class ContentSecurityPolicyMiddleware:
    """Sends settings.PLUGBOARD_CSP with every answer (Django 5.2 has no CSP of its own): no inline
    script runs, so an injected `<script>` or `onclick` does nothing."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.PLUGBOARD_CSP)
        return response


class ApiRateLimitMiddleware:
    """Limits the REST API per client address (429 with Retry-After). Here rather than in DRF's throttles:
    those run after authentication, so requests with wrong tokens (a guesser's) would never be counted.
    The per-caller limit is a DRF throttle (config/throttles.py), which knows the caller."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info.startswith("/api/"):
            retry_after = ratelimit.hit(ratelimit.limit("api.address"), request.META.get("REMOTE_ADDR", ""))
            if retry_after is not None:
                response = JsonResponse(
                    {"detail": f"Too many requests from this address; try again in {retry_after} seconds."},
                    status=429,
                )
                response["Retry-After"] = str(retry_after)
                return response
        return self.get_response(request)


class RequestBodyLimit:
    """ASGI: refuses (413) a request body over DATA_UPLOAD_MAX_MEMORY_SIZE before Django buffers it, and
    (408) one that has not arrived whole within PLUGBOARD_BODY_TIMEOUT. Django's ASGI handler reads a whole
    body into a temporary file before any view runs, and applies the limit only when a view reads
    request.body: a large or endless chunked upload would fill the disk first, and one dripped a byte a
    minute would hold its connection for as long as the client liked. The console takes no file uploads,
    so no legitimate request comes near either. The gateway (/v1/) has its own limits and is not wrapped."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = f"The request body is over the console's limit of {limit} bytes."
        if declared.isdigit() and int(declared) > limit:
            await _send_refusal(send, 413, too_large)
            return
        deadline = asyncio.get_running_loop().time() + settings.PLUGBOARD_BODY_TIMEOUT
        received, refused, whole = 0, False, False

        async def counted_receive():
            nonlocal received, refused, whole
            if refused:
                return {"type": "http.disconnect"}
            if whole:  # Django listens for the client leaving while a view runs: no deadline on that
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # Answered here; Django sees the client leave and answers nothing.
                refused = True
                seconds = settings.PLUGBOARD_BODY_TIMEOUT
                await _send_refusal(send, 408, f"The request body did not arrive within {seconds:g} s.")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if received > limit:
                    refused = True
                    await _send_refusal(send, 413, too_large)
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counted_receive, send)


async def _send_refusal(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
