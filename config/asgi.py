"""The console's ASGI entry point: the OpenAI-compatible gateway answers
`/v1/...` (and the console's Prometheus `/metrics`) itself, beside Django,
which answers everything else (see inference/gateway/app.py for why the
gateway skips Django's request cycle)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from config.middleware import RequestBodyLimit  # noqa: E402 (needs the apps loaded above)
from inference.gateway.app import Gateway  # noqa: E402

django_application = RequestBodyLimit(django_application)

gateway = Gateway()


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await gateway.lifespan(receive, send)  # Django has no lifespan; the gateway flushes its usage on shutdown
    elif scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] == "/metrics"):
        await gateway(scope, receive, send)
    else:
        await django_application(scope, receive, send)
