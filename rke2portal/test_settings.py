"""Settings for the test suite: the normal settings with fixed test keys and fast password hashing.

DATABASE_URL still selects the database, so the same suite runs on SQLite and on PostgreSQL.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("DJANGO_DEBUG", "false")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production-0123456789")
os.environ.setdefault("DJANGO_READ_DOT_ENV_FILE", "false")
if "RKE2PORTAL_DATA_DIR" not in os.environ:
    # Processes started by the tests (workers) inherit the variable and share the folder; its creator removes it.
    os.environ["RKE2PORTAL_DATA_DIR"] = tempfile.mkdtemp(prefix="rke2portal-test-")
    atexit.register(shutil.rmtree, os.environ["RKE2PORTAL_DATA_DIR"], True)
# With a test Redis, Celery messages go there, under a key prefix of their own (worker processes started by the
# tests get the same URL and prefix; see tests/worker.py).
if os.environ.get("TEST_REDIS_URL"):
    os.environ.setdefault("CELERY_BROKER_URL", os.environ["TEST_REDIS_URL"])
    os.environ.setdefault("CELERY_BROKER_KEY_PREFIX", f"rke2portal-test-{os.getpid()}-{os.urandom(4).hex()}:")

from .settings import *  # noqa: F403

# Two keys so that rotation is exercised: data is written with the first and must stay readable with the second.
FIELD_ENCRYPTION_KEYS = [
    "bD0d3kQbOjBbl3hDgGgE7Nw7mCk2u1zJk7dQ2xE0f0Q=",
    "Q2n0tH9o8p3Jx0Wm1yC2b8iHq5kR3sT6uV9wX1zA4bE=",
]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}  # noqa: F405
# Worker processes started by the tests must see the test database: with SQLite it is a file, not memory.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(DATA_DIR / "test.sqlite3")  # noqa: F405
