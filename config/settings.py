"""Plugboard's settings: everything comes from the environment, typed, with
defaults under which `make run` and `make test` work on a fresh machine
(SQLite and an embedded Redis under ./var)."""

from __future__ import annotations

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue
from kombu.common import Broadcast

from config import keys

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

VAR_DIR = Path(env.str("PLUGBOARD_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)
# pytest sets PYTEST_VERSION for its run and every process the suite starts: the tests get the public
# development keys and never depend on (or write) a developer's var/ files.
TESTING = "PYTEST_VERSION" in os.environ

# SECRET_KEY signs sessions and CSRF tokens; PLUGBOARD_SECRETS_KEY (a Fernet key) seals stored credentials
# (config/vault.py). Each comes from the environment, else VAR_DIR/secret_key and VAR_DIR/secrets_key, which
# `make run` writes once (config/keys.py). Outside DEBUG a missing key stops the console rather than fall back
# to a key anyone can read in this repository.
SECRET_KEY = keys.read(VAR_DIR, "SECRET_KEY", files=not TESTING)
PLUGBOARD_SECRETS_KEY = keys.read(VAR_DIR, "PLUGBOARD_SECRETS_KEY", files=not TESTING)
if not (SECRET_KEY and PLUGBOARD_SECRETS_KEY) and not (DEBUG or TESTING):
    raise ImproperlyConfigured(keys.missing_message([n for n in keys.FILES if not keys.read(VAR_DIR, n)], VAR_DIR))
SECRET_KEY = SECRET_KEY or keys.DEVELOPMENT_SECRET_KEY
PLUGBOARD_SECRETS_KEY = PLUGBOARD_SECRETS_KEY or keys.derived_secrets_key(SECRET_KEY)
# Keys that sealed secrets before the current one (comma-separated): still read, never written, until
# `manage.py rotate_secrets_key` has re-sealed everything with the current key.
PLUGBOARD_SECRETS_KEY_OLD = env.list("PLUGBOARD_SECRETS_KEY_OLD", default=[])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "audit",
    "accounts",
    "registry",
    "cluster",
    "deployments",
    "inference",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.ContentSecurityPolicyMiddleware",
    "config.middleware.ApiRateLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "config.middleware.PageInputMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit.context.AuditContextMiddleware",
    "config.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            # Filters every app's pages share; config is not an app, so the library is named here.
            "libraries": {"console": "config.templatetags.console"},
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker, beat and node agents write to one file: wait for the lock instead of failing, and take
    # it when a transaction begins, since SQLite cannot wait to upgrade a read into a write.
    DATABASES["default"].setdefault("OPTIONS", {}).update(timeout=20, transaction_mode="IMMEDIATE")
    # SQLite creates the file but not its folder (a fresh clone has no var/ yet).
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Tests start node agents as processes of their own: the test database must be a file they can open.
    DATABASES["default"].setdefault("TEST", {}).setdefault("NAME", str(VAR_DIR / "test-db.sqlite3"))
else:
    # A database that does not answer (restarting, frozen, cut off) fails a request after this many seconds
    # instead of holding it and its thread without end; the request then answers 503 (config/health.py).
    # With CONN_HEALTH_CHECKS a connection kept between requests is checked before reuse, so one the database
    # dropped while it restarted is replaced instead of failing the next request.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("PLUGBOARD_DB_CONNECT_TIMEOUT", default=5)
    )
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"

# Redis: a unix:// or redis:// URL. The default is the embedded server that
# `make run` and the test suite start under VAR_DIR (see config/embedded_redis.py).
REDIS_URL = env.str("REDIS_URL", default=f"unix://{VAR_DIR / 'redis.sock'}")


def _celery_broker_url(redis_url: str) -> str:
    # kombu spells a Redis unix socket differently from redis-py.
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


CELERY_BROKER_URL = _celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "control"
# Control-plane work; node agents get their own queues ("node.<name>") when the cluster app adds them.
CELERY_TASK_ROUTES = {"registry.tasks.*": {"queue": "control"}}
# "nodes" reaches every node agent at once (a fanout); "node.<name>" queues are made as agents start.
CELERY_TASK_QUEUES = [Queue("control"), Broadcast("nodes")]
CELERY_TASK_CREATE_MISSING_QUEUES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TIMEZONE = TIME_ZONE
# Periodic work, sent to the control queue by `celery beat`.
CELERY_BEAT_SCHEDULE = {
    "usage-rollup": {"task": "inference.tasks.usage_rollup", "schedule": 600.0},
    # Jobs whose message was lost, or whose worker died, are found again (config/jobs.py).
    "sweep-inspections": {"task": "registry.tasks.sweep_inspections", "schedule": 60.0},
    "sweep-fetches": {"task": "cluster.tasks.sweep_fetches", "schedule": 60.0},
}
# A queued job not claimed this long after its message went out is sent again (duplicates are harmless).
PLUGBOARD_JOB_RESEND_SECONDS = env.int("PLUGBOARD_JOB_RESEND_SECONDS", default=300)
# A fetch refreshes its heartbeat every second while it runs; one silent this long has lost its worker.
PLUGBOARD_FETCH_STALE_SECONDS = env.int("PLUGBOARD_FETCH_STALE_SECONDS", default=300)
# A node whose agent has not reported for this long is gone for good: its queued and running fetches fail.
PLUGBOARD_NODE_GONE_SECONDS = env.int("PLUGBOARD_NODE_GONE_SECONDS", default=3600)
# A stale inspection is given to another worker this many times, then fails with the reason.
PLUGBOARD_INSPECTION_ATTEMPTS = env.int("PLUGBOARD_INSPECTION_ATTEMPTS", default=3)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "plugboard",
        # Whoever reads the cache waits at most this long for a Redis that is down or restarting.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "accounts.permissions.TokenScope"],
    # Every body is capped at DATA_UPLOAD_MAX_MEMORY_SIZE, 413 over it (multipart: config/parsers.py).
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "config.parsers.MultiPartParser",
    ],
    # Per caller; per address is config.middleware.ApiRateLimitMiddleware, which counts wrong tokens too.
    "DEFAULT_THROTTLE_CLASSES": ["config.throttles.CallerThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    # Lists with a filterset (django-filter) answer 400 to a query parameter they do not know.
    "DEFAULT_FILTER_BACKENDS": ["config.api.StrictFilterBackend"],
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "config.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Plugboard API",
    "DESCRIPTION": "Register models and LoRA adapters, deploy them, and chat with them.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI from drf-spectacular-sidecar's local copy: no CDN in an air-gapped cluster.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The error shape and each operation's 4xx answers (config/api.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api.document_errors",
    ],
    "ENUM_NAME_OVERRIDES": {
        "ConnectionKindEnum": "registry.models.ConnectionKind",
        "ArtifactKindEnum": "registry.models.ArtifactKind",
        "ArtifactStatusEnum": "registry.models.ArtifactStatus",
        "CacheStatusEnum": "cluster.models.CachedArtifact.Status",
    },
}

# Folders a local-path connection may read from (an NFS mount, the demo store). A plain folder is given to
# every workspace; "folder=slug|slug" gives it to those workspaces only (registry/sources/local.py).
PLUGBOARD_LOCAL_ROOTS = [Path(p) for p in env.list("PLUGBOARD_LOCAL_ROOTS", default=[str(VAR_DIR / "demo-store")])]
# What storage and hub endpoints may reach (registry/sources/network.py). Metadata and link-local addresses
# and the console's own services are refused always. The allowlist (host names, addresses, CIDR networks),
# when set, is all that is reachable besides; the denylist adds to the refusals. The web server's listen
# addresses (host:port; 0.0.0.0 means every address) default to where `make run` starts it.
PLUGBOARD_FETCH_ALLOWLIST = env.list("PLUGBOARD_FETCH_ALLOWLIST", default=[])
PLUGBOARD_FETCH_DENYLIST = env.list("PLUGBOARD_FETCH_DENYLIST", default=[])
PLUGBOARD_WEB_ADDRESSES = env.list(
    "PLUGBOARD_WEB_ADDRESSES",
    default=[f"{env.str('PLUGBOARD_HOST', default='127.0.0.1')}:{env.int('PLUGBOARD_PORT', default=8000)}"],
)
for _address in PLUGBOARD_WEB_ADDRESSES:
    if not _address.rpartition(":")[2].isdigit():
        raise ImproperlyConfigured(f"PLUGBOARD_WEB_ADDRESSES: “{_address}” is not host:port.")
# Pickle-based weights (.bin, .pt) can run code when loaded: refused unless an administrator allows them.
PLUGBOARD_ALLOW_PICKLE_WEIGHTS = env.bool("PLUGBOARD_ALLOW_PICKLE_WEIGHTS", default=False)
# --trust-remote-code runs code from a model's repository inside the model server: refused unless allowed.
PLUGBOARD_ALLOW_TRUST_REMOTE_CODE = env.bool("PLUGBOARD_ALLOW_TRUST_REMOTE_CODE", default=False)
# vLLM flags a deployment's extra arguments may hold beyond the console's own list (deployments/vllm_args.py,
# ALLOWED_FLAGS), e.g. "--max-num-partial-prefills,--hf-overrides"; their values are only checked for control
# characters. Flags the console sets, code flags without PLUGBOARD_ALLOW_TRUST_REMOTE_CODE, and flags that name
# files or URLs (PATH_FLAGS) stay refused even if listed. Servers check again at every (re)launch.
PLUGBOARD_ALLOWED_FLAGS = env.list("PLUGBOARD_ALLOWED_FLAGS", default=[])
# Environment variables a deployment may set beyond the console's own list (ALLOWED_ENV), e.g. "MY_TUNING".
# A name that says it can load code or read files (LD_*, PYTHON*, *_PATH, *_FILE, *_DIR, *_HOME, *_URL,
# *_PLUGIN*, *_CONF, ...) stays refused even if listed. Servers check again at every (re)launch.
PLUGBOARD_ALLOWED_ENV = env.list("PLUGBOARD_ALLOWED_ENV", default=[])
# A safetensors header larger than this is refused as malformed (real ones are kilobytes to a few MB).
PLUGBOARD_MAX_SAFETENSORS_HEADER = env.int("PLUGBOARD_MAX_SAFETENSORS_HEADER", default=100 * 1024 * 1024)
# An artifact listing more files than this is refused at inspection: its manifest is kept in the database.
PLUGBOARD_MAX_ARTIFACT_FILES = env.int("PLUGBOARD_MAX_ARTIFACT_FILES", default=10_000)
# Raw usage records (one per request) are kept this many days (at least 8: the usage page's week reads them),
# hourly totals this many; daily totals stay (inference.services.usage_rollup).
PLUGBOARD_USAGE_RAW_DAYS = max(8, env.int("PLUGBOARD_USAGE_RAW_DAYS", default=8))
PLUGBOARD_USAGE_HOURLY_DAYS = env.int("PLUGBOARD_USAGE_HOURLY_DAYS", default=90)
# Events kept per deployment (its timeline); older ones are dropped as new ones come.
PLUGBOARD_EVENTS_KEPT = env.int("PLUGBOARD_EVENTS_KEPT", default=1000)
# A model server's log on its node is rotated once it grows past this many bytes (copied to server.log.1 and
# emptied in place while the server writes on: deployments/logs.py, rotate); this many rotated files are kept.
PLUGBOARD_SERVER_LOG_MAX_BYTES = env.int("PLUGBOARD_SERVER_LOG_MAX_BYTES", default=64 * 1024 * 1024)
PLUGBOARD_SERVER_LOG_KEEP = env.int("PLUGBOARD_SERVER_LOG_KEEP", default=3)
# Seconds an outside call (S3, the hub) may take before inspection gives up with a message.
PLUGBOARD_SOURCE_TIMEOUT = env.float("PLUGBOARD_SOURCE_TIMEOUT", default=20.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"botocore": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}

# Node agents report this often; a node that misses three reports is shown offline.
PLUGBOARD_NODE_HEARTBEAT_SECONDS = env.float("PLUGBOARD_NODE_HEARTBEAT_SECONDS", default=5.0)
# A node's download bandwidth cap in bytes per second (0: none), so fetches leave room for serving traffic.
PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND = env.int("PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND", default=0)
# A download that stalls fails the fetch instead of holding one of the node's fetch threads forever
# (registry/sources/base.py, StallGuard). Connecting is bounded by PLUGBOARD_SOURCE_TIMEOUT; a stream that
# brings no byte for FETCH_READ_TIMEOUT seconds fails; and since a source that drips a byte every few seconds
# never trips a read timeout, every FETCH_RATE_WINDOW seconds spent waiting on one stream must also bring at
# least FETCH_MIN_BYTES_PER_SECOND per second (0 turns that check off). Keep the minimum well below the
# bandwidth cap above divided by the streams of a fetch (8), though time the cap holds a stream back is not counted.
PLUGBOARD_FETCH_READ_TIMEOUT = env.float("PLUGBOARD_FETCH_READ_TIMEOUT", default=60.0)
PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND = env.int("PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND", default=1024)
PLUGBOARD_FETCH_RATE_WINDOW = env.float("PLUGBOARD_FETCH_RATE_WINDOW", default=60.0)
# The vLLM runtime a node agent reports and (later) launches: the interpreter of its own virtualenv.
PLUGBOARD_VLLM_PYTHON = Path(env.str("PLUGBOARD_VLLM_PYTHON", default=str(BASE_DIR / ".venv-vllm" / "bin" / "python")))

# The OpenAI-compatible gateway (/v1/): the largest request body it takes, the seconds it waits to connect
# to a model server, and the seconds it waits for the server's answer to begin or for the next chunk of a stream.
PLUGBOARD_GATEWAY_MAX_BODY_BYTES = env.int("PLUGBOARD_GATEWAY_MAX_BODY_BYTES", default=4 * 1024 * 1024)
PLUGBOARD_GATEWAY_CONNECT_TIMEOUT = env.float("PLUGBOARD_GATEWAY_CONNECT_TIMEOUT", default=5.0)
PLUGBOARD_GATEWAY_READ_TIMEOUT = env.float("PLUGBOARD_GATEWAY_READ_TIMEOUT", default=300.0)
# The seconds a client has to send its whole request body: one that drips a byte a minute is answered 408
# instead of holding a connection (and a slot of the web process) for as long as it likes.
PLUGBOARD_GATEWAY_BODY_TIMEOUT = env.float("PLUGBOARD_GATEWAY_BODY_TIMEOUT", default=30.0)

# Rate limits: "requests/seconds" (or just "requests", per minute); 0 turns one off. Counted in Redis across
# all web processes (config/ratelimit.py); over a limit is 429 with Retry-After. Per address is the client's
# address as uvicorn sees it: behind a reverse proxy, start uvicorn with --proxy-headers and
# --forwarded-allow-ips so that it is the caller's and not the proxy's. The defaults stop abuse, not use:
# a script would have to send dozens of requests a second to reach them.


def _rate(name: str, default: str) -> tuple[int, int]:
    value = env.str(name, default=default)
    count, _, seconds = value.partition("/")
    try:
        rate = int(count), int(seconds or 60)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: write requests/seconds, such as 600/60.") from None
    if rate[0] < 0 or rate[1] < 1:
        raise ImproperlyConfigured(f"{name}={value!r}: the count must be 0 or more and the seconds 1 or more.")
    return rate


PLUGBOARD_RATE_LIMITS = {
    # Every POST to the sign-in page, right or wrong, per address.
    "signin": _rate("PLUGBOARD_RATE_LIMIT_SIGNIN", "60/60"),
    # The REST API (/api/v1/), per address and per caller (a personal token, or a signed-in user).
    "api.address": _rate("PLUGBOARD_RATE_LIMIT_API_PER_ADDRESS", "3000/60"),
    "api.caller": _rate("PLUGBOARD_RATE_LIMIT_API_PER_CALLER", "3000/60"),
    # The OpenAI-compatible gateway (/v1/), per address and per key (or signed-in user in the playground).
    "gateway.address": _rate("PLUGBOARD_RATE_LIMIT_GATEWAY_PER_ADDRESS", "12000/60"),
    "gateway.key": _rate("PLUGBOARD_RATE_LIMIT_GATEWAY_PER_KEY", "6000/60"),
}
# Failed sign-ins for one username or from one address before each further one locks it out, for 2, 4, 8...
# seconds up to the maximum. Failures are forgotten an hour after the last one.
PLUGBOARD_SIGNIN_FREE_FAILURES = env.int("PLUGBOARD_SIGNIN_FREE_FAILURES", default=5)
PLUGBOARD_SIGNIN_MAX_LOCK_SECONDS = env.int("PLUGBOARD_SIGNIN_MAX_LOCK_SECONDS", default=900)

# The largest request body the console reads: form posts, and every body of the REST API (413 over it,
# config/api.py and config/parsers.py). The gateway has its own limit above.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("PLUGBOARD_MAX_BODY_BYTES", default=2 * 1024 * 1024)
# The seconds a client has to send a whole body (408 after; config/middleware.py, RequestBodyLimit).
PLUGBOARD_BODY_TIMEOUT = env.float("PLUGBOARD_BODY_TIMEOUT", default=30.0)

# Production hardening. PLUGBOARD_HTTPS says the console is reached over HTTPS (directly, or through a proxy
# that terminates TLS: then set PLUGBOARD_BEHIND_PROXY too, and have the proxy send X-Forwarded-Proto): cookies
# are then sent over HTTPS only, plain http is redirected, and browsers are told to insist on HTTPS (HSTS). It
# is off by default because `make run` serves a laptop over plain http; `manage.py check --deploy` warns while
# it is off.
PLUGBOARD_HTTPS = env.bool("PLUGBOARD_HTTPS", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PLUGBOARD_HTTPS
SESSION_COOKIE_HTTPONLY = True
# The CSRF cookie stays readable by scripts: the playground repeats it in X-CSRFToken to the gateway.
CSRF_COOKIE_HTTPONLY = False
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SECURE_SSL_REDIRECT = PLUGBOARD_HTTPS and env.bool("PLUGBOARD_SSL_REDIRECT", default=True)
# Health checks and node agents may reach the console over plain http inside the cluster.
# The health checks answer over plain http: orchestrators and load balancers probe the process directly.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", *env.list("PLUGBOARD_SSL_REDIRECT_EXEMPT", default=[])]
SECURE_HSTS_SECONDS = env.int("PLUGBOARD_HSTS_SECONDS", default=31536000 if PLUGBOARD_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("PLUGBOARD_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("PLUGBOARD_HSTS_PRELOAD", default=False)
# check --deploy wants HSTS preloading on. Preloading is a promise to browsers' built-in lists that every
# subdomain will serve HTTPS for good, and hard to take back: only the domain's owner can make it, so it stays
# an opt-in (PLUGBOARD_HSTS_PRELOAD) and its warning is silenced.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
if env.bool("PLUGBOARD_BEHIND_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The Content-Security-Policy every page gets (config/middleware.py): scripts and style sheets only from the
# console itself (no inline script, handler or <style>), no plugins, no framing. Style attributes stay allowed:
# progress bars and charts set widths and colours from data, and an attribute cannot run code.
PLUGBOARD_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
