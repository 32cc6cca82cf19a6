"""Plugboard's settings: everything comes from the environment, typed, with
defaults under which `make run` and `make test` work on a fresh machine
(SQLite and an embedded Redis under ./var)."""

from __future__ import annotations

from pathlib import Path

import environ
from kombu import Queue
from kombu.common import Broadcast

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

VAR_DIR = Path(env.str("PLUGBOARD_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)
# The default key is for a laptop; production sets SECRET_KEY (and the secrets key below).
SECRET_KEY = env.str("SECRET_KEY", default="plugboard-insecure-development-key-change-me")
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
    "accounts",
    "registry",
    "cluster",
    "deployments",
    "inference",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
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

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "plugboard",
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
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

# Fernet key that encrypts connection secrets at rest. Derived from SECRET_KEY
# when unset, so a laptop install works; set it explicitly in production.
PLUGBOARD_SECRETS_KEY = env.str("PLUGBOARD_SECRETS_KEY", default="")

# Folders a local-path connection may read from (an NFS mount, the demo store).
PLUGBOARD_LOCAL_ROOTS = [Path(p) for p in env.list("PLUGBOARD_LOCAL_ROOTS", default=[str(VAR_DIR / "demo-store")])]
# Pickle-based weights (.bin, .pt) can run code when loaded: refused unless an administrator allows them.
PLUGBOARD_ALLOW_PICKLE_WEIGHTS = env.bool("PLUGBOARD_ALLOW_PICKLE_WEIGHTS", default=False)
# --trust-remote-code runs code from a model's repository inside the model server: refused unless allowed.
PLUGBOARD_ALLOW_TRUST_REMOTE_CODE = env.bool("PLUGBOARD_ALLOW_TRUST_REMOTE_CODE", default=False)
# A safetensors header larger than this is refused as malformed (real ones are kilobytes to a few MB).
PLUGBOARD_MAX_SAFETENSORS_HEADER = env.int("PLUGBOARD_MAX_SAFETENSORS_HEADER", default=100 * 1024 * 1024)
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
# The vLLM runtime a node agent reports and (later) launches: the interpreter of its own virtualenv.
PLUGBOARD_VLLM_PYTHON = Path(env.str("PLUGBOARD_VLLM_PYTHON", default=str(BASE_DIR / ".venv-vllm" / "bin" / "python")))

# The OpenAI-compatible gateway (/v1/): the largest request body it takes, the seconds it waits to connect
# to a model server, and the seconds it waits for the server's answer to begin or for the next chunk of a stream.
PLUGBOARD_GATEWAY_MAX_BODY_BYTES = env.int("PLUGBOARD_GATEWAY_MAX_BODY_BYTES", default=4 * 1024 * 1024)
PLUGBOARD_GATEWAY_CONNECT_TIMEOUT = env.float("PLUGBOARD_GATEWAY_CONNECT_TIMEOUT", default=5.0)
PLUGBOARD_GATEWAY_READ_TIMEOUT = env.float("PLUGBOARD_GATEWAY_READ_TIMEOUT", default=300.0)
