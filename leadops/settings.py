"""LeadOps settings: one file, every value from the environment (see .env.example)."""

from __future__ import annotations

import os
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
    "leadops",
    "scoring",
    "handoff",
    "nurturing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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
