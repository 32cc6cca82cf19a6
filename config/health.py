"""Is this install of the console working? The checks behind `manage.py doctor` and the load balancer's
/healthz (the process answers) and /readyz (it can serve: database, migrations, broker).

Each check returns a Check; none raises, so one broken part never hides what the others would say.

`server_error` is the console's handler500: a request that fails because the database cannot be reached
(down, restarting, frozen past its connect timeout) answers 503 with words to act on, a JSON body for the API,
rather than a bare "Server Error (500)"."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views import defaults
from django.views.decorators.http import require_GET

from config import keys

CLOCK_SKEW = timedelta(seconds=5)  # more than this between the console and a server it uses breaks timeouts


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class Failing(Exception):
    """A check's own verdict, in words to act on (other exceptions are shown with their type)."""


def _guarded(name: str, check: Callable[[], str]) -> Check:
    try:
        return Check(name, True, check())
    except Failing as exc:
        return Check(name, False, str(exc))
    except Exception as exc:  # a check says what failed instead of raising: see the module's docstring
        return Check(name, False, f"{type(exc).__name__}: {exc}"[:300])


def database() -> Check:
    def check() -> str:
        connection = connections[DEFAULT_DB_ALIAS]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return f"{connection.vendor} at {connection.settings_dict.get('HOST') or connection.settings_dict['NAME']}"

    return _guarded("database", check)


_migrated = False  # once every migration is applied, it stays so for this process's life


def migrations() -> Check:
    def check() -> str:
        global _migrated
        if not _migrated:
            executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
            pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
            if pending:
                names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in pending[:5])
                raise Failing(f"{len(pending)} not applied ({names}); run `manage.py migrate`")
            _migrated = True
        return "all applied"

    return _guarded("migrations", check)


def broker() -> Check:
    def check() -> str:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
        seconds, micros = client.time()
        skew = abs(seconds + micros / 1e6 - time.time())
        if skew > CLOCK_SKEW.total_seconds():
            raise Failing(f"Redis's clock is {skew:.1f} s away from this host's; run NTP on both")
        return f"Redis answers (clock within {skew:.2f} s)"

    return _guarded("redis", check)


def secrets_configured() -> Check:
    def check() -> str:
        missing = [name for name in keys.FILES if not keys.read(settings.VAR_DIR, name)]
        if missing:
            raise Failing(f"{' and '.join(missing)} not configured: the console runs on development keys")
        return "SECRET_KEY and PLUGBOARD_SECRETS_KEY are set"

    return _guarded("secrets", check)


def database_clock() -> Check:
    def check() -> str:
        connection = connections[DEFAULT_DB_ALIAS]
        if connection.vendor != "postgresql":
            return f"{connection.vendor} runs on this host's clock"
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            skew = abs((cursor.fetchone()[0] - timezone.now()).total_seconds())
        if skew > CLOCK_SKEW.total_seconds():
            raise Failing(f"the database's clock is {skew:.1f} s away from this host's; run NTP on both")
        return f"within {skew:.2f} s of this host's"

    return _guarded("database clock", check)


def readiness() -> list[Check]:
    """What the web process needs to serve a request."""
    return [database(), migrations(), broker()]


@login_not_required
@require_GET
def healthz(request):
    """Liveness: the process answers. Touches nothing, so a database outage does not get it restarted."""
    return HttpResponse("ok", content_type="text/plain")


@login_not_required
@require_GET
def readyz(request):
    """Readiness: 200 when the database, its migrations and the broker are all fine, else 503 with which
    is not (the check names only: details stay in `manage.py doctor`, for the operator)."""
    checks = readiness()
    ok = all(c.ok for c in checks)
    body = {"status": "ok" if ok else "unavailable", "checks": {c.name: "ok" if c.ok else "failing" for c in checks}}
    return JsonResponse(body, status=200 if ok else 503)


DATABASE_UNAVAILABLE = "The database is not answering right now; try again in a moment."
# How long a client should wait before trying again: about what a database takes to restart.
RETRY_AFTER_SECONDS = 10


def database_unreachable(exc: BaseException | None) -> bool:
    """True when `exc` says the database could not be reached, dropped the connection or gave up waiting (an
    OperationalError: a transient state of the database, not a mistake in a query)."""
    return isinstance(exc, (OperationalError, InterfaceError))


def server_error(request):
    """handler500: 503 with Retry-After when the database is unreachable (JSON under /api/), else Django's 500."""
    if not database_unreachable(sys.exc_info()[1]):
        return defaults.server_error(request)
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": DATABASE_UNAVAILABLE}, status=503)
    else:
        # Plain text: the page's template would need the database (the signed-in user, the menus).
        response = HttpResponse(DATABASE_UNAVAILABLE, content_type="text/plain; charset=utf-8", status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
