"""docker-compose.yml and the Dockerfile only run what exists in this project, in the right order.

Docker itself is not needed: the files are parsed, and every command they start is resolved against the code
(management commands, WSGI module, Celery application and queues).
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

BASE_DIR = Path(__file__).resolve().parents[2]
COMPOSE = BASE_DIR / "docker-compose.yml"
DOCKERFILE = BASE_DIR / "Dockerfile"
APP_SERVICES = ("migrate", "web", "worker", "beat")
# Variables the compose file itself needs (the application reads the rest from .env).
_VARIABLE_RE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def argv_of(command: Any) -> list[list[str]]:
    """The command lines a compose ``command``/``test`` runs (``sh -c "a && b"`` gives two)."""
    if isinstance(command, str):
        command = shlex.split(command)
    command = [str(part) for part in command]
    if command and command[0] in ("CMD", "CMD-SHELL"):
        command = command[1:] if command[0] == "CMD" else ["sh", "-c", command[1]]
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;|\|\|", command[2]) if part.strip()]
    return [command]


def check_command(argv: list[str]) -> None:
    """Fail unless ``argv`` runs something this project provides (or a tool the image installs)."""
    from celery import Celery
    from django.core.management import get_commands

    program = argv[0]
    if program == "python" and argv[1:2] == ["manage.py"]:
        assert argv[2] in get_commands(), f"unknown management command: {argv[2]}"
    elif program == "python" and argv[1:2] == ["-c"]:
        compile(argv[2], "<healthcheck>", "exec")
    elif program == "gunicorn":
        target = next(arg for arg in argv[1:] if not arg.startswith("-"))
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute or "application"))
    elif program == "celery":
        app_name = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--app="))
        app = importlib.import_module(f"{app_name}.celery").app
        assert isinstance(app, Celery)
        subcommand = next(arg for arg in argv[1:] if not arg.startswith("-"))
        assert subcommand in ("worker", "beat", "inspect"), subcommand
        queues = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--queues=")]
        if subcommand == "worker":
            from django.conf import settings

            from clusters.services.jobs import JOB_QUEUE

            assert queues, "the worker must name its queues"
            assert set(queues[0].split(",")) == {JOB_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE}
    elif program in ("pg_isready", "redis-cli", "redis-server", "sh"):
        pass  # provided by the postgres and redis images / the shell
    else:
        raise AssertionError(f"unexpected program {program!r} in {argv}")


def test_every_command_exists_in_the_project(compose: dict[str, Any]) -> None:
    checked = 0
    for service in compose["services"].values():
        commands = []
        if "command" in service:
            commands.append(service["command"])
        if "healthcheck" in service:
            commands.append(service["healthcheck"]["test"])
        for command in commands:
            for argv in argv_of(command):
                # ${VAR:-default} in arguments is substituted by compose; check the default.
                argv = [
                    _VARIABLE_RE.sub(lambda m: (m.group(0).split(":-", 1) + ["1"])[1].rstrip("}"), arg) for arg in argv
                ]
                check_command(argv)
                checked += 1
    assert checked >= 8


def test_application_services_wait_for_the_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(APP_SERVICES) | {"postgres", "redis"} <= set(services)
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in ("postgres", "redis", "web", "worker"):
        assert services[name]["healthcheck"]["test"], name
    # Only the one-shot service migrates.
    for name, service in services.items():
        if name != "migrate" and "command" in service:
            assert "migrate" not in " ".join(map(str, service["command"])), name


def test_configuration_comes_from_the_environment(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        environment = service["environment"]
        assert (
            environment["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in environment["DATABASE_URL"]
        )
        assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert any(entry["path"] == ".env" for entry in service["env_file"])
    assert "SECRET" not in COMPOSE.read_text().replace("DJANGO_SECRET_KEY", "")


def test_compose_variables_are_documented() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (BASE_DIR / ".env.example").read_text(), re.M))
    used = set(_VARIABLE_RE.findall(COMPOSE.read_text()))
    assert used - documented == set()


def test_the_image_runs_the_web_process_as_an_unprivileged_user() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER rke2portal$", text, re.M)
    assert "collectstatic --noinput" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    check_command(yaml.safe_load(cmd.group(1)))
    assert "openssh-client" in text  # ssh-agent and ssh-add for ansible-runner
