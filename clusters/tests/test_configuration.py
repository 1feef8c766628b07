"""Settings come from the environment only, with an embedded default that needs no server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
_ENV_READ_RE = re.compile(r"""\benv(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]*)["']""")

PROBE = """
import json
import django
from django.conf import settings
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode")
    journal = cursor.fetchone()[0]
    cursor.execute("PRAGMA busy_timeout")
    busy = cursor.fetchone()[0]
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "journal": journal, "busy_ms": busy,
    "transaction_mode": connection.transaction_mode, "broker": settings.CELERY_BROKER_URL,
    "debug": settings.DEBUG, "keys": len(settings.FIELD_ENCRYPTION_KEYS), "hosts": settings.ALLOWED_HOSTS,
}))
"""


def run_settings(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """Import the production settings in a fresh interpreter with only ``environ`` set (and no .env file)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "rke2portal.settings",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "RKE2PORTAL_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
        **environ,
    }
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_every_variable_the_settings_read_is_documented_in_env_example():
    read = set(_ENV_READ_RE.findall((ROOT / "rke2portal" / "settings.py").read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read, "no env() calls found: the pattern no longer matches settings.py"
    assert sorted(read - documented) == [], "add these variables to .env.example"
    compose_only = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert sorted(documented - read - compose_only) == [], "these variables in .env.example are read by nothing"


def test_embedded_default_is_sqlite_in_wal_mode_and_a_serverless_broker(tmp_path):
    result = run_settings(
        tmp_path, DJANGO_SECRET_KEY="x" * 50, FIELD_ENCRYPTION_KEYS="a,b", DJANGO_ALLOWED_HOSTS="a, b"
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["engine"] == "django.db.backends.sqlite3"
    assert probe["name"] == str(tmp_path / "data" / "db.sqlite3")
    assert probe["journal"] == "wal"
    assert probe["busy_ms"] == 30000
    assert probe["transaction_mode"] == "IMMEDIATE"
    assert probe["broker"] == "filesystem://"
    assert probe["debug"] is False
    assert probe["keys"] == 2
    assert probe["hosts"] == ["a", "b"]


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    result = run_settings(tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
    result = run_settings(tmp_path, DJANGO_DEBUG="true")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["debug"] is True


def test_system_check_fails_without_encryption_keys(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "rke2portal.settings",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "RKE2PORTAL_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
        "DJANGO_SECRET_KEY": "x" * 50,
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "clusters.E001" in result.stderr and "FIELD_ENCRYPTION_KEYS" in result.stderr
