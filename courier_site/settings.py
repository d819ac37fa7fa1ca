"""Django settings for Courier, read from the environment through django-environ."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env is convenient in development; real deployments set the environment.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

COURIER_ENV = env.str("COURIER_ENV", default="development")
if COURIER_ENV not in {"development", "staging", "production"}:
    raise environ.ImproperlyConfigured(
        f"[E1005] COURIER_ENV must be development, staging or production, not {COURIER_ENV!r}"
    )
IS_PRODUCTION = COURIER_ENV == "production"

DEBUG = env.bool("DEBUG", default=COURIER_ENV == "development")
# No production default: staging and production must set SECRET_KEY themselves.
if COURIER_ENV == "development":
    SECRET_KEY = env.str("SECRET_KEY", default="development-only-secret-key-not-for-deployment")
else:
    SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Master key sealing every stored secret (32 random bytes, base64). Courier refuses to
# start without a valid one [E1005]. Older keys stay listed only while rotating.
COURIER_MASTER_KEY = env.str("COURIER_MASTER_KEY", default="")
COURIER_PREVIOUS_MASTER_KEYS = env.list("COURIER_PREVIOUS_MASTER_KEYS", default=[])
_master_key_problem = None
try:
    from courier_site.envelope import MasterKey

    MasterKey.from_base64(COURIER_MASTER_KEY)
    for _previous in COURIER_PREVIOUS_MASTER_KEYS:
        MasterKey.from_base64(_previous, "COURIER_PREVIOUS_MASTER_KEYS")
except Exception as _error:  # re-raised as Django's configuration error below
    _master_key_problem = str(_error)
if _master_key_problem:
    raise environ.ImproperlyConfigured(_master_key_problem)

COURIER_DATA_DIR = Path(env.str("COURIER_DATA_DIR", default=str(BASE_DIR / ".data" / "files")))
COURIER_SQL_DIR = BASE_DIR / "sql"
# Expired history partitions are exported here (gzip CSV + SHA-256 manifest) before they
# are dropped. Give it a volume of its own in production: it is the only copy of that history.
COURIER_ARCHIVE_DIR = Path(env.str("COURIER_ARCHIVE_DIR", default=str(COURIER_DATA_DIR / "archive")))
# Steps may only touch paths under these folders (the data dir always included) [E2040].
# Extra modules that register step types (plug-ins), e.g. "acme_steps.partner_api".
COURIER_STEP_MODULES = env.list("COURIER_STEP_MODULES", default=[])
COURIER_ALLOWED_ROOTS = [COURIER_DATA_DIR, *(Path(root) for root in env.list("COURIER_ALLOWED_ROOTS", default=[]))]

INSTALLED_APPS = [
    "unfold",
    "unfold.contrib.filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "courier_site",
    "system",
    "tags",
    "audit",
    "keystore",
    "connections",
    "jobs",
    "monitors",
    "notifications",
    # Above every domain app: the dashboard reads them all.
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "courier_site.urls"
WSGI_APPLICATION = "courier_site.wsgi.application"

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

DATABASES = {"default": env.db("DATABASE_URL")}
DATABASES["default"].setdefault("OPTIONS", {})
# Persistent connections: workers and web processes reuse them between requests/tasks.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / ".data" / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
LOGIN_URL = "admin:login"
# A sign-in from the bare login page (a bookmark, a link in a notification) lands on the
# dashboard, not on Django's default /accounts/profile/, which Courier does not serve.
LOGIN_REDIRECT_URL = "admin:index"

SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=IS_PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=IS_PRODUCTION)
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=int(timedelta(hours=8).total_seconds()))
# Sign-in throttling: this many failed console logins for one username, or from one client
# address, within COURIER_LOGIN_LOCKOUT_MINUTES lock that username or address for as long.
# Counters live in PostgreSQL (login_throttles) so every web host enforces the same lock.
COURIER_LOGIN_MAX_FAILURES = env.int("COURIER_LOGIN_MAX_FAILURES", default=5)
COURIER_LOGIN_LOCKOUT_MINUTES = env.int("COURIER_LOGIN_LOCKOUT_MINUTES", default=15)
if COURIER_LOGIN_MAX_FAILURES < 1 or COURIER_LOGIN_LOCKOUT_MINUTES < 1:
    raise environ.ImproperlyConfigured(
        "[E1005] COURIER_LOGIN_MAX_FAILURES and COURIER_LOGIN_LOCKOUT_MINUTES must be at least 1"
    )

# ---------------------------------------------------------------- Celery
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None  # results live in PostgreSQL (execution rows), not in Redis
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# A task is acknowledged after it finishes, so a worker killed mid-task leaves the
# message to be redelivered instead of silently dropping it.
CELERY_TASK_ACKS_LATE = True
# Together with acks_late: a task whose worker process died is rejected back to the queue.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Tasks are long (file transfers) and uneven; prefetching more than one would
# park work behind a busy process while other processes sit idle.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Maintenance tasks must never run unbounded: soft limit raises inside the task so it
# can clean up; the hard limit kills a process that ignored it. Job steps carry their
# own per-step timeouts inside the engine, so job tasks override these.
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=600)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=660)
# With acks_late, Redis redelivers an unacknowledged message after this timeout;
# it must exceed the longest task, otherwise a long task would run twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=43200)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# When the Redis connection drops, running executions carry on (Celery 6 would cancel them
# by default): they cannot be acknowledged, but the message is gone with Redis anyway, and
# the database claim, not the message, decides who runs an execution.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Every Courier task goes to this queue; separate installations sharing one Redis give
# each their own name.
COURIER_QUEUE = env.str("COURIER_QUEUE", default="courier")
CELERY_TASK_DEFAULT_QUEUE = COURIER_QUEUE
# The clock's own queue (schedule ticks, dispatch sweep, recovery, chain reconciliation),
# served by a small worker of its own so that long transfers occupying every job worker
# process never delay a schedule. Empty means "<COURIER_QUEUE>-control".
COURIER_CONTROL_QUEUE = env.str("COURIER_CONTROL_QUEUE", default="")
# Notification deliveries (SMTP, webhooks) wait on partners' servers: they get a queue of
# their own ("<COURIER_QUEUE>-notify"), so a hanging receiver never holds up a job or the clock.
# The console's address as operators reach it, for the links in notifications.
COURIER_CONSOLE_URL = env.str("COURIER_CONSOLE_URL", default="http://127.0.0.1:8000").rstrip("/")
CELERY_TASK_ROUTES = ("courier_site.celery.route_task",)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "courier_site.beat:HeartbeatScheduler"
CELERY_BEAT_SCHEDULE_FILENAME = str(
    Path(env.str("CELERY_BEAT_SCHEDULE_FILENAME", default=str(BASE_DIR / ".data" / "celerybeat-schedule")))
)

# Seconds between process heartbeats, and age after which a process counts as gone.
COURIER_HEARTBEAT_INTERVAL = env.int("COURIER_HEARTBEAT_INTERVAL", default=10)
COURIER_HEARTBEAT_TIMEOUT = env.int("COURIER_HEARTBEAT_TIMEOUT", default=60)
# A queued execution handed to Celery but not claimed by a worker within this many
# seconds is dispatched again by the sweep (its message was lost with a Redis restart).
# Longer than a busy worker takes to pick up a message; shorter than operators will wait.
COURIER_REDISPATCH_AFTER_SECONDS = env.int("COURIER_REDISPATCH_AFTER_SECONDS", default=30)
# A worker whose database goes away (a restart, a failover) keeps its running steps going and
# retries its checkpoint and state writes on a new connection for this many seconds before it
# gives up on the execution (crash recovery then fails it as "worker lost").
COURIER_DATABASE_OUTAGE_SECONDS = env.int("COURIER_DATABASE_OUTAGE_SECONDS", default=120)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Periodic sweeps run every few seconds; their receipts would drown what matters.
        # Executions are recorded in the audit log; raise these to INFO when debugging Celery.
        "celery.app.trace": {"level": env.str("CELERY_TASK_LOG_LEVEL", default="WARNING")},
        "celery.worker.strategy": {"level": env.str("CELERY_TASK_LOG_LEVEL", default="WARNING")},
        "celery.beat": {"level": env.str("CELERY_TASK_LOG_LEVEL", default="WARNING")},
    },
}

UNFOLD = {
    "SITE_TITLE": "Courier",
    "SITE_HEADER": "Courier",
    "SITE_SUBHEADER": "Managed file transfer",
    "SHOW_HISTORY": True,
    "SHOW_VIEW_ON_SITE": False,
    "SIDEBAR": {
        # Pages grouped by task (Overview, Jobs & runs, Schedules & chains, Monitors, Partners,
        # Keys, Audit, Administration), each item shown only to users who may view it.
        "navigation": "console.navigation.sidebar",
        "show_search": True,
        "show_all_applications": False,
    },
}
