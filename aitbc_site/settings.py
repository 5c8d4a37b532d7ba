"""The AITBC Coordinator's one settings module, configured from the environment.

The defaults give the embedded platform (SQLite, in-process broker and channel layer);
production sets ``DATABASE_URL``, ``REDIS_URL`` and ``DRAMATIQ_BROKER_URL``.
"""

import socket
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.env import env_bool, env_decimal, env_int, env_list, env_rate, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("AITBC_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
# ``SECRET_KEY`` from the environment, else the one bin/start generated once into the data dir,
# so every manage.py command finds the key the embedded server runs with.
SECRET_KEY_FILE = DATA_DIR / "secret_key"
SECRET_KEY = env_str("SECRET_KEY") or (SECRET_KEY_FILE.read_text().strip() if SECRET_KEY_FILE.is_file() else "")
# The external miner agent (``manage.py runminer``) signs nothing of the coordinator's: a miner
# host needs no key, and Django refuses any use of an empty one.
if not SECRET_KEY and sys.argv[1:2] != ["runminer"]:
    if not DEBUG:
        raise ImproperlyConfigured(
            f"SECRET_KEY is required when DEBUG is off: set it, or run bin/start once to generate {SECRET_KEY_FILE}"
        )
    SECRET_KEY = "insecure-development-key-only-for-debug"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ("localhost", "127.0.0.1", "[::1]"))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_dramatiq",
    "aitbc_site",
    "core",
    "accounts",
    "miners",
    "catalog",
    "jobs",
    "inference",
    "payments",
    "explorer",
    "openai_compat",
    "agents",
    "swarm",
    "webhooks",
]

MIDDLEWARE = [
    "aitbc_site.metrics.MetricsMiddleware",
    "core.api.middleware.StorableTextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Innermost: it is sync-only, so under daphne the middleware above it run in one thread, in
    # sync mode, instead of each hopping to a thread and back (about a dozen hops a request).
    "whitenoise.middleware.WhiteNoiseMiddleware",
]

ROOT_URLCONF = "aitbc_site.urls"
WSGI_APPLICATION = "aitbc_site.wsgi.application"
ASGI_APPLICATION = "aitbc_site.asgi.application"
APPEND_SLASH = False

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

# --- Database -------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'aitbc.sqlite3'}",
    )
}
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if IS_POSTGRES:
    # Django's psycopg 3 pool replaces persistent connections (CONN_MAX_AGE must stay 0).
    if env_bool("DATABASE_POOL", True):
        DATABASES["default"]["OPTIONS"] = {
            "pool": {
                "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2, minimum=0),
                "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20, minimum=1),
                # How long a request waits for a connection. After a database restart the pool
                # reconnects with backoff (1, 2, 4, 8 s…): a request waits that out, not fails.
                "timeout": env_int("DATABASE_POOL_TIMEOUT_SECONDS", 30, minimum=1),
            }
        }
        # The pool then checks a connection before handing it out: those a database restart ended
        # are replaced instead of failing a request each. The backend's check looks at the socket
        # and sends a query only when the server sent something (core.dbpool).
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        DATABASES["default"]["ENGINE"] = "core.backends.postgresql"
    # Server-side binding lets PostgreSQL reuse the plans of the queue's hot statements.
    if env_bool("DATABASE_PREPARED_STATEMENTS", True):
        DATABASES["default"]["OPTIONS"] = {
            **DATABASES["default"].get("OPTIONS", {}),
            "server_side_binding": True,
            "prepare_threshold": 2,
        }
    DATABASES["default"]["TEST"] = {"NAME": env_str("TEST_DATABASE_NAME") or None}
else:
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
# The pages' sign-in (accounts/urls.py); signed in, a person lands on the overview at ``/``.
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The pages' shared stylesheet, scripts and icon; each app's own scripts are in its static/.
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {"apscheduler": {"level": "WARNING"}},
}

# --- Redis, cache and channel layer --------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    from core import channel_layers

    CACHES = {"default": {"BACKEND": "core.backends.redis_cache.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis, sending and receiving in bulk (core/channel_layers.py).
            "BACKEND": "core.channel_layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # redis-py caps a pool at 100 connections unless told otherwise.
                        "max_connections": 5000,
                        **channel_layers.connection_options(REDIS_URL),
                    }
                ],
                # Every socket and stream of one server process is fed from one Redis queue, and
                # a message past its capacity is dropped: a job's tokens are one message per job,
                # so 200 streaming jobs fill channels-redis's default of 100 in one decoding step.
                "capacity": 20_000,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Dramatiq -------------------------------------------------------------------------
DRAMATIQ_BROKER_URL = env_str("DRAMATIQ_BROKER_URL")
_DRAMATIQ_MIDDLEWARE = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "inference.middleware.InferenceHostMiddleware",
    "agents.middleware.EmbeddedAgentMiddleware",
]
if DRAMATIQ_BROKER_URL.startswith(("redis://", "rediss://")):
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {"url": DRAMATIQ_BROKER_URL},
        "MIDDLEWARE": _DRAMATIQ_MIDDLEWARE,
    }
elif DRAMATIQ_BROKER_URL.startswith(("amqp://", "amqps://")):
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.rabbitmq.RabbitmqBroker",
        "OPTIONS": {"url": DRAMATIQ_BROKER_URL},
        "MIDDLEWARE": _DRAMATIQ_MIDDLEWARE,
    }
elif not DRAMATIQ_BROKER_URL:
    DRAMATIQ_BROKER = {"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}, "MIDDLEWARE": _DRAMATIQ_MIDDLEWARE}
else:
    raise ImproperlyConfigured("DRAMATIQ_BROKER_URL must start with redis:// or amqp://")
DRAMATIQ_AUTODISCOVER_MODULES = ["tasks"]
# With the stub broker, the server process runs the actors and the schedule itself.
EMBEDDED_WORKERS = env_bool("AITBC_EMBEDDED_WORKERS", not DRAMATIQ_BROKER_URL)
EMBEDDED_WORKER_THREADS = env_int("AITBC_EMBEDDED_WORKER_THREADS", 4, minimum=1)

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.authentication.ApiKeyAuthentication",
        "accounts.api.authentication.SessionTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["core.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.StrictJSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.api.negotiation.JSONFirstNegotiation",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "aitbc_site.schema.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Anonymous rate limits count per client IP. X-Forwarded-For is trusted only for the
    # reverse proxies in front of us (NUM_PROXIES); otherwise any caller could forge it.
    "NUM_PROXIES": env_int("NUM_PROXIES", 0, minimum=0),
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "AITBC Coordinator API",
    "DESCRIPTION": (
        "Marketplace coordinator for AI inference: clients submit jobs, GPU miners claim and "
        "complete them, every completion is receipted with an Ed25519 signature."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.JobStatus",
        "MinerStatusEnum": "miners.models.MinerStatus",
        "PaymentStatusEnum": "payments.models.PaymentStatus",
        "AgentStatusEnum": "agents.models.AgentStatus",
        "SwarmTaskStatusEnum": "swarm.models.TaskStatus",
        "SwarmMemberPriorityEnum": "swarm.models.MemberPriority",
        "SwarmMemberRoleEnum": "swarm.models.MemberRole",
        "ChatMessageRoleEnum": "openai_compat.shapes.ROLES",
    },
}

# The largest request body read (413 REQUEST_TOO_LARGE beyond it). It must hold a miner's
# largest result: an embedding job's vectors come back twice (``embeddings`` and ``data``).
REQUEST_MAX_BODY_BYTES = env_int("REQUEST_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_MAX_BODY_BYTES

API_KEYS_FROM_ENV = {
    "client": env_list("CLIENT_API_KEYS") + env_list("API_KEYS"),
    "miner": env_list("MINER_API_KEYS"),
    "agent": env_list("AGENT_API_KEYS"),
    "admin": env_list("ADMIN_API_KEYS"),
}
RATE_LIMITS = {
    "client": env_rate("RATE_LIMIT_CLIENT", "100/min"),
    "miner": env_rate("RATE_LIMIT_MINER", "1000/min"),
    "agent": env_rate("RATE_LIMIT_AGENT", "1000/min"),
    "admin": env_rate("RATE_LIMIT_ADMIN", "1000/min"),
    "user": env_rate("RATE_LIMIT_USER", "60/min"),
    "anonymous": env_rate("RATE_LIMIT_ANONYMOUS", "60/min"),
}
RATE_LIMITS_ENABLED = env_bool("RATE_LIMITS_ENABLED", True)
# The server processes sharing the limits: while Redis is down each one allows limit ÷ this.
RATE_LIMIT_PROCESSES = env_int("RATE_LIMIT_PROCESSES", 1, minimum=1)
RATE_LIMIT_KEY_PREFIX = env_str("RATE_LIMIT_KEY_PREFIX", "aitbc:rl")

# --- Wallet sign-in -------------------------------------------------------------------
WALLET_NONCE_TTL_SECONDS = env_int("WALLET_NONCE_TTL_SECONDS", 300, minimum=1)
USER_SESSION_TTL_SECONDS = env_int("USER_SESSION_TTL_SECONDS", 86400, minimum=1)

# --- Jobs and miners ------------------------------------------------------------------
JOB_DEFAULT_TTL_SECONDS = env_int("JOB_DEFAULT_TTL_SECONDS", 900, minimum=1)
# The model a generation job naming none runs on (the AITBC CLI's ``client submit`` without
# ``--model``); empty: the catalog's first enabled chat model.
JOB_DEFAULT_MODEL = env_str("JOB_DEFAULT_MODEL")
JOB_MAX_TTL_SECONDS = env_int("JOB_MAX_TTL_SECONDS", 7 * 24 * 3600, minimum=1)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3, minimum=1)
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 120, minimum=1)
# A queued job gains one priority level for every this many seconds it waits.
JOB_PRIORITY_AGEING_SECONDS = env_int("JOB_PRIORITY_AGEING_SECONDS", 120, minimum=1)
# The longest text a job may carry (its prompt, its chat messages' contents together, or its
# embedding inputs together), in characters: well past what the catalog's models read.
JOB_MAX_INPUT_CHARS = env_int("JOB_MAX_INPUT_CHARS", 100_000, minimum=1)
# The largest job payload as stored (JSON, UTF-8): the text plus params and anything else sent.
JOB_MAX_PAYLOAD_BYTES = env_int("JOB_MAX_PAYLOAD_BYTES", 1024 * 1024, minimum=1024)
MINER_HEARTBEAT_TIMEOUT_SECONDS = env_int("MINER_HEARTBEAT_TIMEOUT_SECONDS", 90, minimum=1)
MINER_MAX_POLL_WAIT_SECONDS = env_int("MINER_MAX_POLL_WAIT_SECONDS", 60, minimum=0)
MINER_MAX_CLAIM_BATCH = env_int("MINER_MAX_CLAIM_BATCH", 64, minimum=1)
# How long a queue outlook (is_possible, wait estimate) for one kind of job may be reused.
JOB_OUTLOOK_CACHE_SECONDS = env_int("JOB_OUTLOOK_CACHE_SECONDS", 2, minimum=0)
HOUSEKEEPING_INTERVAL_SECONDS = env_int("HOUSEKEEPING_INTERVAL_SECONDS", 5, minimum=1)

# --- Verification ---------------------------------------------------------------------
# Matching prefers reputable miners: one whose reputation r is below 1 claims a job only once it
# has waited this many seconds × (1 − r).
MATCHING_REPUTATION_HEADSTART_SECONDS = float(env_decimal("MATCHING_REPUTATION_HEADSTART_SECONDS", "2"))
# The platform account that submits (and pays for) canaries.
VERIFICATION_CANARY_USERNAME = env_str("VERIFICATION_CANARY_USERNAME", "canary")
# The most attempts a verified job (``verification.redundancy``) may ask for.
VERIFICATION_MAX_REDUNDANCY = env_int("VERIFICATION_MAX_REDUNDANCY", 7, minimum=2)
# The share of the jobs an external miner completes that are followed by a canary (a known-answer
# job, answered first by an in-cluster worker) pinned to it: 0 to 1.
VERIFICATION_CANARY_RATE = float(env_decimal("VERIFICATION_CANARY_RATE", "0"))
if VERIFICATION_CANARY_RATE > 1:
    raise ImproperlyConfigured(f"VERIFICATION_CANARY_RATE must be at most 1, got {VERIFICATION_CANARY_RATE}")
# A miner is suspended (it claims nothing until staff lift it) once it gives this many wrong
# answers (outvoted attempts, failed canaries) within the reputation window, since any lift.
VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS = env_int("VERIFICATION_SUSPEND_AFTER_WRONG_ANSWERS", 3, minimum=1)

# The OpenAI-compatible routes: how long a request waits for a miner to take its job, and for
# the job to end, before it answers 504 with the job's id (the job goes on; its result is
# fetched later from /v1/jobs/<id>/result).
OPENAI_QUEUE_TIMEOUT_SECONDS = env_int("OPENAI_QUEUE_TIMEOUT_SECONDS", 60, minimum=0)
OPENAI_RESPONSE_TIMEOUT_SECONDS = env_int("OPENAI_RESPONSE_TIMEOUT_SECONDS", 600, minimum=1)

# --- Agents ---------------------------------------------------------------------------
# How tasks are assigned to agents: least_connections, weighted_round_robin or capability_match.
AGENT_LB_STRATEGY = env_str("AGENT_LB_STRATEGY", "least_connections")
if AGENT_LB_STRATEGY not in ("least_connections", "weighted_round_robin", "capability_match"):
    raise ImproperlyConfigured(f"AGENT_LB_STRATEGY {AGENT_LB_STRATEGY!r} is not a known strategy")
# An agent silent this long becomes stale and its tasks go to others.
AGENT_HEARTBEAT_TIMEOUT_SECONDS = env_int("AGENT_HEARTBEAT_TIMEOUT_SECONDS", 60, minimum=1)
AGENT_MAX_POLL_WAIT_SECONDS = env_int("AGENT_MAX_POLL_WAIT_SECONDS", 60, minimum=0)
# The tasks an agent runs at once unless it registers another max_concurrent_tasks.
AGENT_MAX_CONCURRENT_TASKS = env_int("AGENT_MAX_CONCURRENT_TASKS", 4, minimum=1)

# --- Swarms ---------------------------------------------------------------------------
# The share of a redundant task's collaborators that must agree, unless the task sets its own.
SWARM_CONSENSUS_THRESHOLD = float(env_decimal("SWARM_CONSENSUS_THRESHOLD", "0.5"))
if not 0 < SWARM_CONSENSUS_THRESHOLD <= 1:
    raise ImproperlyConfigured("SWARM_CONSENSUS_THRESHOLD must be above 0 and at most 1")
# The most members one coordinated task takes, and the most items a split task cuts.
SWARM_MAX_COLLABORATORS = env_int("SWARM_MAX_COLLABORATORS", 32, minimum=1)
SWARM_MAX_SPLIT_ITEMS = env_int("SWARM_MAX_SPLIT_ITEMS", 256, minimum=1)

RECEIPT_SIGNING_KEY_HEX = env_str("RECEIPT_SIGNING_KEY_HEX")

# --- Money ----------------------------------------------------------------------------
# Credits every new account starts with (minted by the treasury), so the embedded demo works.
AITBC_WELCOME_CREDITS = env_decimal("AITBC_WELCOME_CREDITS", "100")
# The platform's share of what a job pays its miner, in percent.
PLATFORM_FEE_PERCENT = env_decimal("PLATFORM_FEE_PERCENT", "5")
# A staff credit moving more than this in all (AITBC) waits for a second staff member's approval.
ADMIN_CREDIT_APPROVAL_THRESHOLD = env_decimal("ADMIN_CREDIT_APPROVAL_THRESHOLD", "1000")

# --- Inference ------------------------------------------------------------------------
# The catalog models this process serves as an in-cluster worker (its Dramatiq workers load
# them and claim their jobs). Embedded, the server serves the two offline models itself.
INFERENCE_MODELS = env_list("INFERENCE_MODELS", ("smollm2-135m", "minilm-l6") if EMBEDDED_WORKERS else ())
INFERENCE_MINER_ID = env_str("INFERENCE_MINER_ID", f"{socket.gethostname()}-cluster")
INFERENCE_OWNER_USERNAME = env_str("INFERENCE_OWNER_USERNAME", "cluster")
# An agent in-process beside the inference host (agents.embedded): on by default when embedded.
AGENT_EMBEDDED = env_bool("AGENT_EMBEDDED", EMBEDDED_WORKERS)
AGENT_EMBEDDED_ID = env_str("AGENT_EMBEDDED_ID", f"{INFERENCE_MINER_ID}-agent")
# Rows of a continuous batch: room for jobs arriving while others decode (at 16 rows, staggered
# arrivals on two CPU cores waited for room; bench/README.md has the figures).
INFERENCE_BATCH_SIZE = env_int("INFERENCE_BATCH_SIZE", 32, minimum=1)
# CPU threads for inference in this process; 0 leaves torch's default (one per core).
INFERENCE_THREADS = env_int("INFERENCE_THREADS", 0, minimum=0)
INFERENCE_DEVICE = env_str("INFERENCE_DEVICE")  # "cuda", "cpu"…; empty picks CUDA when present
INFERENCE_HEARTBEAT_SECONDS = env_int("INFERENCE_HEARTBEAT_SECONDS", max(1, JOB_LEASE_SECONDS // 4), minimum=1)
INFERENCE_DRAIN_TIME_LIMIT_MS = env_int("INFERENCE_DRAIN_TIME_LIMIT_SECONDS", 3600, minimum=1) * 1000
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR", str(DATA_DIR / "models"))).resolve()
# How long a process may reuse what it read of the model catalog.
MODEL_CATALOG_CACHE_SECONDS = env_int("MODEL_CATALOG_CACHE_SECONDS", 5, minimum=0)

# --- Explorer: receipts and blocks ------------------------------------------------------
# Earlier coordinator key ids (URL-safe base64) whose receipts and blocks still verify.
RECEIPT_TRUSTED_KEY_IDS = env_list("RECEIPT_TRUSTED_KEY_IDS")
# At most this many receipts and ledger transactions go into one block.
BLOCK_MAX_LEAVES = env_int("BLOCK_MAX_LEAVES", 1000, minimum=1)
# One housekeeping run seals at most this many blocks, and starts no block after this many
# seconds (its actor's time limit is three times that); the next run goes on.
BLOCK_MAX_BLOCKS_PER_RUN = env_int("BLOCK_MAX_BLOCKS_PER_RUN", 100, minimum=1)
BLOCK_SEAL_RUN_SECONDS = env_int("BLOCK_SEAL_RUN_SECONDS", 20, minimum=1)
EXPLORER_STATS_CACHE_SECONDS = env_int("EXPLORER_STATS_CACHE_SECONDS", 5, minimum=0)

# --- Exchange: buying AITBC with Bitcoin -------------------------------------------------
# AITBC minted per BTC received.
BTC_TO_AITBC_RATE = env_decimal("BTC_TO_AITBC_RATE", "100000")
if BTC_TO_AITBC_RATE <= 0:
    raise ImproperlyConfigured("BTC_TO_AITBC_RATE must be positive")
EXCHANGE_NETWORK = env_str("EXCHANGE_NETWORK", "testnet").lower()
if EXCHANGE_NETWORK not in ("mainnet", "testnet", "signet", "regtest"):
    raise ImproperlyConfigured(
        f"EXCHANGE_NETWORK must be mainnet, testnet, signet or regtest, got {EXCHANGE_NETWORK!r}"
    )
# Watch-only account key of the wallet receiving deposits (xpub/zpub; tpub/vpub off mainnet):
# request n pays to the P2WPKH address at m/0/n below it. The test-network default is BIP-84's
# published test account, m/84'/1'/0' of the mnemonic "abandon abandon … abandon about", whose
# private keys are public knowledge: it makes the embedded demo work, and must never hold real coins.
EXCHANGE_XPUB = env_str("EXCHANGE_XPUB")
if not EXCHANGE_XPUB:
    if EXCHANGE_NETWORK == "mainnet":
        raise ImproperlyConfigured("EXCHANGE_XPUB is required when EXCHANGE_NETWORK is mainnet")
    EXCHANGE_XPUB = "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8ZhDYe2jWAqvZVnsc"
# How long a payment request stays open for its deposit.
EXCHANGE_PAYMENT_TTL_SECONDS = env_int("EXCHANGE_PAYMENT_TTL_SECONDS", 3600, minimum=1)
# A webhook reporting fewer confirmations than this is refused.
EXCHANGE_MIN_CONFIRMATIONS = env_int("EXCHANGE_MIN_CONFIRMATIONS", 1, minimum=0)
# Shared with the payment processor, which signs its confirmations with it; empty turns the webhook off.
EXCHANGE_WEBHOOK_SECRET = env_str("EXCHANGE_WEBHOOK_SECRET")

# --- Webhooks -------------------------------------------------------------------------
# Private, loopback and link-local endpoints are refused unless this is set (tests, closed networks).
WEBHOOKS_ALLOW_PRIVATE = env_bool("WEBHOOKS_ALLOW_PRIVATE", False)
WEBHOOKS_MAX_PER_USER = env_int("WEBHOOKS_MAX_PER_USER", 20, minimum=1)
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# A delivery failing this long after its first attempt is given up and its endpoint disabled.
WEBHOOK_RETRY_SECONDS = env_int("WEBHOOK_RETRY_SECONDS", 86400, minimum=0)
# Dramatiq's backoff between attempts: doubling from the minimum up to the maximum, with jitter.
WEBHOOK_RETRY_MIN_BACKOFF_MS = env_int("WEBHOOK_RETRY_MIN_BACKOFF_MS", 10_000, minimum=1)
WEBHOOK_RETRY_MAX_BACKOFF_MS = env_int("WEBHOOK_RETRY_MAX_BACKOFF_MS", 3_600_000, minimum=1)
WEBHOOK_MAX_RETRIES = env_int("WEBHOOK_MAX_RETRIES", 100, minimum=0)
# After a secret is rotated, deliveries are signed with the old one too for this long.
WEBHOOK_SECRET_ROTATION_SECONDS = env_int("WEBHOOK_SECRET_ROTATION_SECONDS", 86400, minimum=0)
WEBHOOK_RESEND_BATCH = env_int("WEBHOOK_RESEND_BATCH", 500, minimum=1)
