"""LeadOps settings: one file, every value from the environment (see .env.example)."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from handoff.tasks import BEAT_SCHEDULE as HANDOFF_BEAT_SCHEDULE
from leadops.engines import database_url, redis_url
from leadops.tasks import BEAT_SCHEDULE as LEADOPS_BEAT_SCHEDULE
from nurturing.tasks import BEAT_SCHEDULE as NURTURING_BEAT_SCHEDULE
from scoring.tasks import BEAT_SCHEDULE as SCORING_BEAT_SCHEDULE

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}.")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}.") from exc


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


RATE_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600}
RATE_PERIODS |= {"hour": 3600, "d": 86400, "day": 86400}


def env_rate(name: str, default: str) -> tuple[int, int] | None:
    """A rate such as "120000/min" as (120000, 60) (per s, min, hour, day); "off": None."""
    value = (os.environ.get(name) or default).strip().lower()
    if value == "off":
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*([a-z]+)", value)
    if not match or match.group(2) not in RATE_PERIODS or int(match.group(1)) < 1:
        raise ImproperlyConfigured(
            f"{name} must look like 120000/min (per s, min, hour or day) or be off, not {value!r}."
        )
    return int(match.group(1)), RATE_PERIODS[match.group(2)]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "dev-only-insecure-key-change-me-" + "x" * 32

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "csp",
    "axes",
    "leadops",
    "scoring",
    "handoff",
    "nurturing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "leadops.middleware.ApiBodySizeLimitMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: turns a login refused by the lock-out into its 429 page (leadops.lockout).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "leadops.urls"
WSGI_APPLICATION = "leadops.wsgi.application"
ASGI_APPLICATION = "leadops.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The header's Queue / Inbox links and the bell (lazy: one query when shown).
                "handoff.views.header_context",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        database_url(), conn_max_age=env_int("DB_CONN_MAX_AGE", 60), conn_health_checks=True
    )
}
# The ORM binds on the client and never prepares; the few hot statements run through
# leadops.sql.prepared_cursor are prepared from their fifth run on a connection. Set
# DB_PREPARED_STATEMENTS=false behind a pooler that cannot keep prepared statements
# (PgBouncer in transaction mode before 1.21).
DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
    5 if env_bool("DB_PREPARED_STATEMENTS", True) else None
)
# Several suites may share one server (parallel checkouts): TEST_DB_NAME keeps them apart.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_DB_NAME") or None}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = os.environ.get("LANGUAGE_CODE", "ja")
LANGUAGES = [("ja", _("Japanese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = os.environ.get("TIME_ZONE", "Asia/Tokyo")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LOGIN_URL = "admin:login"

# Request bodies: the API refuses anything larger with 413 (see leadops.api).
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# CSV lists may be larger than an API body; the importer enforces its own limit.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
CSV_IMPORT_MAX_BYTES = env_int("CSV_IMPORT_MAX_BYTES", 20 * 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "leadops.authentication.TokenWithRolesAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "EXCEPTION_HANDLER": "leadops.api_errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LeadOps API",
    "DESCRIPTION": "Leads, behaviour events, scoring and the MQL→SQL→SAL hand-off.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI assets come from the sidecar package: no CDN at run time.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery --------------------------------------------------------------------------
CELERY_BROKER_URL = redis_url()
CELERY_RESULT_BACKEND = redis_url()
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis down or hanging (stopped, a network partition) must not hang a web request: every
# client of it answers or fails within this many seconds. Ingest then rescores inline,
# notifications wait for the retry scan, the cache is skipped (docs/operations.md).
REDIS_TIMEOUT_SECONDS = env_int("REDIS_TIMEOUT_SECONDS", 2)
CELERY_BROKER_CONNECTION_TIMEOUT = REDIS_TIMEOUT_SECONDS
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": REDIS_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
}
# A publish gives up after one quick retry: callers have a fallback (see above).
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_REDIS_SOCKET_TIMEOUT = REDIS_TIMEOUT_SECONDS
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = REDIS_TIMEOUT_SECONDS
# A rescore batch claimed longer ago than this is taken to belong to a dead worker and
# is put back in the queue by the sweep (rescoring twice is harmless, only slower).
SCORING_DRAIN_LEASE_SECONDS = env_int("SCORING_DRAIN_LEASE_SECONDS", 120)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / "var" / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    **LEADOPS_BEAT_SCHEDULE,
    **SCORING_BEAT_SCHEDULE,
    **HANDOFF_BEAT_SCHEDULE,
    **NURTURING_BEAT_SCHEDULE,
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_url(),
        "KEY_PREFIX": "leadops",
        "OPTIONS": {
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        },
    }
}

# --- Email -----------------------------------------------------------------------------
EMAIL_BACKEND = os.environ.get(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
# Where the file-based backend writes mails (`make run` uses it: one file per batch).
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", str(BASE_DIR / "var" / "mail"))
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "LeadOps <leadops@localhost>")

# --- Security (production: DEBUG off) --------------------------------------------------
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The health endpoints are probed over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz/$", r"^health/$"]

# Content-Security-Policy on every response (django-csp): scripts and styles only from
# our own static files, no inline script or style, no framing, forms post only here.
# Pages keep their JavaScript and CSS in static/ (tests/security/test_headers.py checks).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        # data: for the icons Swagger UI and the admin draw as inline SVG data URLs.
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Login lock-out (django-axes, leadops.lockout): failed logins are counted per username
# and client address (in Redis); past the limit that pair waits out the cool-off (429).
AUTHENTICATION_BACKENDS = [
    "leadops.lockout.LoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "leadops.lockout.LockoutCacheHandler"
AXES_FAILURE_LIMIT = env_int("LEADOPS_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LEADOPS_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "leadops.lockout.client_ip"
AXES_LOCKOUT_CALLABLE = "leadops.lockout.lockout_response"
# The cache handler writes no attempt rows: nothing for the admin to list.
AXES_ENABLE_ADMIN = False
AXES_VERBOSE = False  # no banner on every manage.py command; failures are still logged
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_TIME.total_seconds() < 60:
    raise ImproperlyConfigured(
        "LEADOPS_LOGIN_FAILURE_LIMIT and LEADOPS_LOGIN_COOLOFF_MINUTES must be 1 or more."
    )

# API ingest rate per token (leadops.throttling): POST /api/v1/leads/ and /api/v1/events/.
# Generous by default (2,000 requests a second on average over a minute): a runaway
# integration is stopped, a busy one is not. "off" removes the limit.
LEADOPS_API_INGEST_RATE = env_rate("LEADOPS_API_INGEST_RATE", "120000/min")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Scoring (scoring/services/rescoring.py) -------------------------------------------
# Rescore-all (activation, demo, bench) runs this many chunks at once, one database
# connection each: about the number of cores PostgreSQL may use for it (1: one by one).
SCORING_PARALLEL_CHUNKS = env_int("SCORING_PARALLEL_CHUNKS", 2)

# --- Dashboard (leadops/dashboard.py) ---------------------------------------------------
# A cold dashboard runs its aggregate queries on this many connections at once (1: one
# after another in one transaction).
DASHBOARD_PARALLEL_QUERIES = env_int("DASHBOARD_PARALLEL_QUERIES", 3)

# --- Hand-off notifications (handoff/notifications.py, handoff/webhooks.py) ------------
# Absolute links in notification emails and webhook posts, e.g. https://leads.example.com.
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
NOTIFICATION_EMAIL_FROM = os.environ.get("NOTIFICATION_EMAIL_FROM", "") or DEFAULT_FROM_EMAIL
# Seconds a webhook may take to answer before the post counts as failed (and is retried).
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10)
# Tries per delivery (email or webhook) before it is marked failed; waits between tries
# double from the backoff: 60 s, 2 min, 4 min … (a 429's Retry-After wins).
NOTIFICATION_MAX_ATTEMPTS = env_int("NOTIFICATION_MAX_ATTEMPTS", 6)
NOTIFICATION_RETRY_BACKOFF_SECONDS = env_int("NOTIFICATION_RETRY_BACKOFF_SECONDS", 60)
# Tests only: lets webhooks post over plain HTTP to loopback/private addresses (a local
# test server). Deliberately not read from the environment, so production cannot enable it.
WEBHOOK_ALLOW_PRIVATE_HOSTS = False
if min(WEBHOOK_TIMEOUT_SECONDS, NOTIFICATION_MAX_ATTEMPTS, NOTIFICATION_RETRY_BACKOFF_SECONDS) < 1:
    raise ImproperlyConfigured(
        "WEBHOOK_TIMEOUT_SECONDS, NOTIFICATION_MAX_ATTEMPTS and "
        "NOTIFICATION_RETRY_BACKOFF_SECONDS must be 1 or more."
    )

# --- Nurturing mail (nurturing/sending.py, nurturing/tracking.py) -----------------------
# Nurture mails a minute, a budget shared by every worker and scheduler.
NURTURING_SEND_RATE_PER_MINUTE = env_int("NURTURING_SEND_RATE_PER_MINUTE", 600)
# How long the open pixel, click and unsubscribe links of a mail keep working.
NURTURING_TOKEN_MAX_AGE_DAYS = env_int("NURTURING_TOKEN_MAX_AGE_DAYS", 180)
NURTURING_FROM_EMAIL = os.environ.get("NURTURING_FROM_EMAIL", "") or DEFAULT_FROM_EMAIL
# A mailbox someone reads, added to List-Unsubscribe as mailto: (empty: the link only).
NURTURING_UNSUBSCRIBE_MAILTO = os.environ.get("NURTURING_UNSUBSCRIBE_MAILTO", "")
# Segments: time allowed for an exact count before the admin shows PostgreSQL's estimate.
NURTURING_SEGMENT_COUNT_TIMEOUT_MS = env_int("NURTURING_SEGMENT_COUNT_TIMEOUT_MS", 2000)
# How often a step-mail track re-runs its segment to enroll new matches.
NURTURING_ENROLL_INTERVAL_SECONDS = env_int("NURTURING_ENROLL_INTERVAL_SECONDS", 300)
# Largest audience enrolled while activating a track; larger ones by the next beat run.
NURTURING_ENROLL_NOW_MAX = env_int("NURTURING_ENROLL_NOW_MAX", 20_000)

# --- Website capture (nurturing/capture.py) ------------------------------------------------
# Sites allowed to send page views and post to every form (each form adds its own).
LEADOPS_CAPTURE_ORIGINS = env_list("LEADOPS_CAPTURE_ORIGINS")
LEADOPS_CAPTURE_ORIGINS_CACHE_SECONDS = env_int("LEADOPS_CAPTURE_ORIGINS_CACHE_SECONDS", 30)
# Public form posts allowed per visitor IP and per form within the window (429 beyond).
LEADOPS_FORM_RATE_PER_IP = env_int("LEADOPS_FORM_RATE_PER_IP", 10)
LEADOPS_FORM_RATE_PER_FORM = env_int("LEADOPS_FORM_RATE_PER_FORM", 300)
LEADOPS_FORM_RATE_WINDOW_SECONDS = env_int("LEADOPS_FORM_RATE_WINDOW_SECONDS", 60)
# Proxies in front of LeadOps whose X-Forwarded-For is trusted (1 behind one TLS proxy).
LEADOPS_TRUSTED_PROXY_COUNT = env_int("LEADOPS_TRUSTED_PROXY_COUNT", 0)
