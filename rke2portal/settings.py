"""Settings for RKE2 Portal.

Everything is read from the environment (django-environ). A ``.env`` file in the project root is read when it
exists and ``DJANGO_READ_DOT_ENV_FILE`` is not false; ``scripts/run`` creates one for the embedded default.
``.env.example`` documents every variable.
"""

from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if env.bool("DJANGO_READ_DOT_ENV_FILE", default=True) and (BASE_DIR / ".env").is_file():
    env.read_env(str(BASE_DIR / ".env"))

DEBUG = env.bool("DJANGO_DEBUG", default=False)

if DEBUG:
    SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-development-key-do-not-use-in-production")
else:
    SECRET_KEY = env("DJANGO_SECRET_KEY")

ALLOWED_HOSTS = [
    host.strip()
    for host in env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
    if host.strip()
]
CSRF_TRUSTED_ORIGINS = [
    origin.strip() for origin in env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[]) if origin.strip()
]

# Data folder of the embedded default: SQLite database, file-system broker, job working directories.
DATA_DIR = Path(env("RKE2PORTAL_DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "clusters",
]

MIDDLEWARE = [
    "rke2portal.health.ProbeMiddleware",  # /healthz and /readyz, before host checks and the HTTPS redirect
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "rke2portal.urls"

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
        },
    },
]

WSGI_APPLICATION = "rke2portal.wsgi.application"

# Database: DATABASE_URL, default a SQLite file in the data folder.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # WAL lets the web process read while the worker writes events; IMMEDIATE transactions take the
            # write lock up front so concurrent writers wait (busy timeout) instead of failing mid-transaction.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
            "timeout": env.int("SQLITE_BUSY_TIMEOUT", default=30),
            "transaction_mode": "IMMEDIATE",
        }
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
try:  # collectstatic fills it; WhiteNoise warns on every start when the folder is missing
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:
    pass
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

LOGIN_URL = "admin:login"

# Security headers for deployments behind TLS.
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("DJANGO_BEHIND_TLS_PROXY", False) else None
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
X_FRAME_OPTIONS = "DENY"

# Secrets at rest: comma-separated Fernet keys, newest first, independent of SECRET_KEY. The first key encrypts;
# every key decrypts, so a new key can be prepended and old rows re-encrypted with
# `manage.py rotate_encryption_keys`. Required to store any secret (a system check fails without it).
FIELD_ENCRYPTION_KEYS = [key.strip() for key in env.list("FIELD_ENCRYPTION_KEYS", default=[]) if key.strip()]

# Celery. The default broker is a folder on disk (no server needed); production uses Redis.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://")
_BROKER_DIR = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        # Fanout exchanges (remote control, broadcast): kombu's default is a `control` folder in the working
        # directory.
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": env.float("CELERY_BROKER_POLLING_INTERVAL", default=0.5),
    }
    for _folder in ("queue", "processed", "control"):
        (_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
else:
    # A playbook task is acknowledged on receipt, but keep the visibility timeout above the longest job anyway.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=6 * 3600)}
    # Lets several portals (or test runs) share one Redis database without seeing each other's queues.
    if env("CELERY_BROKER_KEY_PREFIX", default=""):
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = env("CELERY_BROKER_KEY_PREFIX")
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Playbook jobs run one at a time per worker process and are acknowledged on receipt (never redelivered).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {"clusters.run_job": {"queue": "playbooks"}}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_BEAT_SCHEDULE = {
    "reap-lost-jobs": {
        "task": "clusters.reap_lost_jobs",
        "schedule": env.float("JOB_REAPER_INTERVAL_SECONDS", default=60.0),
    },
    "sweep-webhooks": {
        "task": "clusters.sweep_webhooks",
        "schedule": env.float("WEBHOOK_SWEEP_INTERVAL_SECONDS", default=60.0),
    },
    "health-sync": {
        "task": "clusters.health_sync",
        "schedule": env.float("HEALTH_SYNC_INTERVAL_SECONDS", default=300.0),
    },
    "schedule-etcd-snapshots": {
        "task": "clusters.schedule_etcd_snapshots",
        "schedule": env.float("ETCD_SNAPSHOT_SCHEDULE_SECONDS", default=60.0),
    },
    "purge-job-events": {
        "task": "clusters.purge_job_events",
        "schedule": crontab(hour=env.int("JOB_EVENT_PURGE_HOUR", default=3), minute=17),
    },
}

# Job engine.
JOBS_WORK_DIR = Path(env("JOBS_WORK_DIR", default=str(DATA_DIR / "jobs")))
# Whole-job and no-output limits (a job's own timeout_seconds/idle_timeout_seconds win when set).
JOB_TIMEOUT_SECONDS = env.int("JOB_TIMEOUT_SECONDS", default=4 * 3600)
JOB_IDLE_TIMEOUT_SECONDS = env.int("JOB_IDLE_TIMEOUT_SECONDS", default=30 * 60)
# A running job bumps its heartbeat this often; without one for JOB_LOST_AFTER_SECONDS its worker is lost.
JOB_HEARTBEAT_SECONDS = env.int("JOB_HEARTBEAT_SECONDS", default=10)
JOB_LOST_AFTER_SECONDS = env.int("JOB_LOST_AFTER_SECONDS", default=90)
# A pending job whose task message is neither queued nor held by a worker this long after the request is failed.
JOB_DISPATCH_GRACE_SECONDS = env.int("JOB_DISPATCH_GRACE_SECONDS", default=300)
# How often a running job looks for a cancel request, and how long ansible-runner waits per output poll.
JOB_CANCEL_POLL_SECONDS = env.float("JOB_CANCEL_POLL_SECONDS", default=1.0)
JOB_PEXPECT_TIMEOUT_SECONDS = env.float("JOB_PEXPECT_TIMEOUT_SECONDS", default=1.0)
# SSH of playbook runs: connection set-up limit, and keepalives (a host answering none of COUNT sent every SECONDS
# is unreachable: a cut link fails the stage in about SECONDS * COUNT instead of hanging until TCP gives up).
JOB_SSH_CONNECT_TIMEOUT_SECONDS = env.int("JOB_SSH_CONNECT_TIMEOUT_SECONDS", default=30)
JOB_SSH_KEEPALIVE_SECONDS = env.int("JOB_SSH_KEEPALIVE_SECONDS", default=15)
JOB_SSH_KEEPALIVE_COUNT = env.int("JOB_SSH_KEEPALIVE_COUNT", default=4)
# Event ingestion: events are written in batches of up to JOB_EVENT_BATCH_SIZE, at least every
# JOB_EVENT_FLUSH_SECONDS; at most JOB_EVENT_QUEUE_SIZE events wait in memory.
JOB_EVENT_BATCH_SIZE = env.int("JOB_EVENT_BATCH_SIZE", default=200)
JOB_EVENT_FLUSH_SECONDS = env.float("JOB_EVENT_FLUSH_SECONDS", default=0.5)
JOB_EVENT_QUEUE_SIZE = env.int("JOB_EVENT_QUEUE_SIZE", default=10000)
# Module results longer than this many characters are dropped from stored event data.
JOB_EVENT_MAX_RESULT_CHARS = env.int("JOB_EVENT_MAX_RESULT_CHARS", default=200000)
# Webhooks: per-attempt timeout, attempts before giving up, and the backoff (base * 2^(attempt-1), capped).
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=6)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=10.0)
WEBHOOK_RETRY_MAX_SECONDS = env.float("WEBHOOK_RETRY_MAX_SECONDS", default=3600.0)
# Jobs ended this recently are checked by the sweep for deliveries not created yet.
WEBHOOK_SWEEP_WINDOW_SECONDS = env.int("WEBHOOK_SWEEP_WINDOW_SECONDS", default=3600)
# Health sync (beat, every HEALTH_SYNC_INTERVAL_SECONDS): each sync job may run this long, and finished syncs are
# kept this many hours (the last one of each cluster always).
HEALTH_SYNC_TIMEOUT_SECONDS = env.int("HEALTH_SYNC_TIMEOUT_SECONDS", default=120)
HEALTH_SYNC_KEEP_HOURS = env.float("HEALTH_SYNC_KEEP_HOURS", default=24.0)
# Readiness (/readyz): how long the broker connection and the worker ping may take.
READYZ_TIMEOUT_SECONDS = env.float("READYZ_TIMEOUT_SECONDS", default=2.0)
JOB_EVENT_RETENTION_DAYS = env.int("JOB_EVENT_RETENTION_DAYS", default=90)
ANSIBLE_DIR = Path(env("ANSIBLE_DIR", default=str(BASE_DIR / "ansible")))
# How RKE2 reaches the hosts: "script" (the official install script, pinned version) or "airgap" (artifacts
# copied from RKE2_AIRGAP_ARTIFACT_DIR on the worker: one sub-folder per version, e.g. v1.31.4+rke2r1/, required;
# install.sh there or in the folder itself).
RKE2_INSTALL_METHOD = env("RKE2_INSTALL_METHOD", default="script")
RKE2_INSTALL_SCRIPT_URL = env("RKE2_INSTALL_SCRIPT_URL", default="https://get.rke2.io")
# Method "script" from an internal mirror: the URL prefix the install script downloads the release from (passed as
# INSTALL_RKE2_ARTIFACT_URL; a mirror of https://github.com/rancher/rke2/releases/download laid out
# <prefix>/<version>/rke2.linux-<arch>.tar.gz and sha256sum-<arch>.txt; empty: the script's default, GitHub), and the
# sha256 the downloaded script must have (empty: not checked).
RKE2_INSTALL_ARTIFACT_URL = env("RKE2_INSTALL_ARTIFACT_URL", default="")
RKE2_INSTALL_SCRIPT_SHA256 = env("RKE2_INSTALL_SCRIPT_SHA256", default="")
RKE2_AIRGAP_ARTIFACT_DIR = env("RKE2_AIRGAP_ARTIFACT_DIR", default="")
# Seconds a service start may take before the job fails with the service's last log lines.
RKE2_START_TIMEOUT_SECONDS = env.int("RKE2_START_TIMEOUT_SECONDS", default=600)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "clusters.api.pagination.StandardPagination",
    "EXCEPTION_HANDLER": "rke2portal.exceptions.api_exception_handler",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=50),
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# Personal API tokens (django-rest-knox): only a SHA-512 hash is stored, each token has a name and an expiry.
# A user asks for a lifetime in days when creating one: API_TOKEN_DEFAULT_DAYS when unsaid, API_TOKEN_MAX_DAYS at most.
API_TOKEN_DEFAULT_DAYS = env.int("API_TOKEN_DEFAULT_DAYS", default=30)
API_TOKEN_MAX_DAYS = env.int("API_TOKEN_MAX_DAYS", default=365)
KNOX_TOKEN_MODEL = "clusters.APIToken"
# knox's own migrations would create the table of its default token model, which the portal replaces.
MIGRATION_MODULES = {"knox": None}
REST_KNOX = {
    "TOKEN_MODEL": KNOX_TOKEN_MODEL,
    "TOKEN_TTL": timedelta(days=API_TOKEN_DEFAULT_DAYS),
    "TOKEN_PREFIX": "rke2p_",
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
}
# Seconds ssh-keyscan waits for a host when a job checks (or first learns) its host keys.
SSH_KEYSCAN_TIMEOUT_SECONDS = env.int("SSH_KEYSCAN_TIMEOUT_SECONDS", default=5)
# Store the host keys a host presents the first time a job reaches it. Off: only keys pinned in the SSH
# credential's known_hosts (or stored earlier) are trusted, and hosts without one are refused.
SSH_HOST_KEY_TRUST_ON_FIRST_USE = env.bool("SSH_HOST_KEY_TRUST_ON_FIRST_USE", default=True)

SPECTACULAR_SETTINGS = {
    "TITLE": "RKE2 Portal API",
    "DESCRIPTION": "Create, install, scale, upgrade and remove RKE2 clusters; follow their jobs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
