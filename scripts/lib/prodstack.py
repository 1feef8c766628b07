"""The production-shaped stack on one machine (see ``scripts/prodstack``).

Layout of ``PRODSTACK_DIR`` (default ``./data/prodstack``, mode 0700):

- ``stack.json``: ports and generated passwords (0600); ``env``: the portal's environment (0600), shared by web,
  workers and beat as production requires (same database, broker and encryption keys);
- ``pg/``: the PostgreSQL cluster (its own server on ``127.0.0.1``, password authentication);
- ``redis/``: Redis with an append-only file (a restart keeps the queue) and a password;
- ``jobs-worker1/``, ``jobs-worker2/``: each worker's own JOBS_WORK_DIR (a tmpfs of ``PRODSTACK_JOBS_TMPFS_MB``
  megabytes when set, as root);
- ``static/``: collected static files served by gunicorn (WhiteNoise); ``log/``: one log per service;
  ``run/``: one pid file per service.

Settings read on first start (saved in ``env``): ``PRODSTACK_PG_PORT``, ``PRODSTACK_REDIS_PORT``,
``PRODSTACK_WEB_PORT`` (default: free ports), ``PRODSTACK_WORKER_CONCURRENCY`` (default 2),
``PRODSTACK_WEB_WORKERS`` (default 2), ``PRODSTACK_PG_FAST=1`` (no fsync: throwaway stacks),
``PRODSTACK_JOBS_TMPFS_MB``, and any portal variable of the caller's environment (``DJANGO_*``, ``JOB_*``,
``RKE2_*``, ``FIELD_ENCRYPTION_KEYS``, ``LOG_LEVEL``, ``CELERY_VISIBILITY_TIMEOUT``), which overrides the
generated value.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("PRODSTACK_DIR") or ROOT / "data" / "prodstack").resolve()
VENV_BIN = ROOT / ".venv" / "bin"
SERVICES = ("postgres", "redis", "web", "worker1", "worker2", "beat")
WORKERS = ("worker1", "worker2")
PASS_THROUGH_PREFIXES = ("DJANGO_", "JOB_", "RKE2_", "ANSIBLE_")
PASS_THROUGH = ("FIELD_ENCRYPTION_KEYS", "LOG_LEVEL", "CELERY_VISIBILITY_TIMEOUT", "JOB_REAPER_INTERVAL_SECONDS")


def die(message: str) -> None:
    print(f"prodstack: {message}", file=sys.stderr)
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found and "postgresql" in found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for folder in versions:
        if (folder / name).exists():
            return str(folder / name)
    die(f"{name} not found: install the postgresql package")
    return ""


def is_root() -> bool:
    return os.geteuid() == 0


def as_postgres(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool as the ``postgres`` user when root (PostgreSQL refuses to run as root)."""
    if is_root():
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


# Configuration.


def load_config() -> dict[str, object]:
    path = STACK / "stack.json"
    if path.exists():
        return json.loads(path.read_text())
    STACK.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(STACK, 0o700)
    config: dict[str, object] = {
        "pg_port": int(os.environ.get("PRODSTACK_PG_PORT") or free_port()),
        "redis_port": int(os.environ.get("PRODSTACK_REDIS_PORT") or free_port()),
        "web_port": int(os.environ.get("PRODSTACK_WEB_PORT") or free_port()),
        "pg_password": secrets.token_urlsafe(18),
        "redis_password": secrets.token_urlsafe(18),
        "concurrency": int(os.environ.get("PRODSTACK_WORKER_CONCURRENCY") or 2),
        "web_workers": int(os.environ.get("PRODSTACK_WEB_WORKERS") or 2),
        "pg_fast": os.environ.get("PRODSTACK_PG_FAST", "") in ("1", "true", "yes"),
        "jobs_tmpfs_mb": int(os.environ.get("PRODSTACK_JOBS_TMPFS_MB") or 0),
    }
    write_private(path, json.dumps(config, indent=2))
    write_env(config)
    return config


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def portal_env(config: dict[str, object]) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {
        "DJANGO_SETTINGS_MODULE": "rke2portal.settings",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Served over plain HTTP on the loopback here; production sits behind a TLS proxy.
        "DJANGO_SESSION_COOKIE_SECURE": "false",
        "DJANGO_CSRF_COOKIE_SECURE": "false",
        "DJANGO_CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{config['web_port']}",
        "DJANGO_STATIC_ROOT": str(STACK / "static"),
        "RKE2PORTAL_DATA_DIR": str(STACK / "data"),
        "DATABASE_URL": f"postgres://portal:{config['pg_password']}@127.0.0.1:{config['pg_port']}/portal",
        "CELERY_BROKER_URL": f"redis://:{config['redis_password']}@127.0.0.1:{config['redis_port']}/0",
    }
    for key, value in os.environ.items():
        if key.startswith(PASS_THROUGH_PREFIXES) or key in PASS_THROUGH:
            if key not in ("DJANGO_SETTINGS_MODULE",):
                env[key] = value
    return env


def write_env(config: dict[str, object]) -> None:
    env = portal_env(config)
    lines = ["# The portal's environment for every service of this stack (written by scripts/prodstack)."]
    lines += [f"{key}={value}" for key, value in sorted(env.items())]
    write_private(STACK / "env", "\n".join(lines) + "\n")


def read_env() -> dict[str, str]:
    env = {}
    for line in (STACK / "env").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


def service_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {key: os.environ[key] for key in ("HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME") if key in os.environ}
    base["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])
    base["PYTHONDONTWRITEBYTECODE"] = "1"
    base.update(read_env())
    base.update(extra or {})
    return base


# Process bookkeeping.


def pid_file(service: str) -> Path:
    return STACK / "run" / f"{service}.pid"


def log_file(service: str) -> Path:
    return STACK / "log" / f"{service}.log"


def read_pid(service: str) -> int | None:
    if service == "postgres":
        path = STACK / "pg" / "data" / "postmaster.pid"
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
    try:
        return int(pid_file(service).read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def running(service: str) -> bool:
    return alive(read_pid(service))


def spawn(service: str, argv: list[str], env: dict[str, str]) -> int:
    (STACK / "run").mkdir(exist_ok=True)
    (STACK / "log").mkdir(exist_ok=True)
    with open(log_file(service), "ab") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    pid_file(service).write_text(f"{process.pid}\n")
    return process.pid


def wait_until(check, timeout: float, what: str, service: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if service not in ("postgres", "redis") and not running(service):
            break
        time.sleep(0.2)
    tail = log_file(service).read_text(errors="replace")[-3000:] if log_file(service).exists() else ""
    die(f"{service}: {what} did not happen within {timeout:.0f} s\n{tail}")


# Services.


def start_postgres(config: dict[str, object]) -> None:
    data = STACK / "pg" / "data"
    pg = STACK / "pg"
    if not data.exists():
        pg.mkdir(mode=0o700, exist_ok=True)
        if is_root():
            user = pwd.getpwnam("postgres")
            os.chown(pg, user.pw_uid, user.pw_gid)
            os.chmod(STACK, 0o711)  # postgres must reach its folder; the other entries stay 0700
        pwfile = pg / "pwfile"
        write_private(pwfile, str(config["pg_password"]))
        if is_root():
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        result = as_postgres(
            [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--auth-local=peer",
             "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"]
        )  # fmt: skip
        pwfile.unlink()
        if result.returncode:
            die(f"initdb failed: {result.stderr}")
    options = [
        "-c listen_addresses=127.0.0.1", f"-p {config['pg_port']}", f"-k {pg}", "-c max_connections=200",
    ]  # fmt: skip
    if config.get("pg_fast"):
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    result = as_postgres(
        [pg_bin("pg_ctl"), "-D", str(data), "-l", str(pg / "server.log"), "-w", "-t", "60", "-o", " ".join(options),
         "start"]
    )  # fmt: skip
    if result.returncode:
        die(f"PostgreSQL did not start: {result.stdout}{result.stderr}")
    created = as_postgres(
        [pg_bin("psql"), "-h", str(pg), "-p", str(config["pg_port"]), "-U", "postgres", "-tAc",
         "SELECT 1 FROM pg_roles WHERE rolname = 'portal'"]
    )  # fmt: skip
    if created.stdout.strip() != "1":
        password = str(config["pg_password"]).replace("'", "''")
        for sql in (
            f"CREATE ROLE portal LOGIN PASSWORD '{password}'",
            "CREATE DATABASE portal OWNER portal",
        ):
            result = as_postgres(
                [pg_bin("psql"), "-h", str(pg), "-p", str(config["pg_port"]), "-U", "postgres", "-c", sql]
            )
            if result.returncode:
                die(f"{sql.split(' PASSWORD')[0]} failed: {result.stderr}")


def stop_postgres(timeout: float) -> None:
    data = STACK / "pg" / "data"
    if running("postgres"):
        as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"])


def start_redis(config: dict[str, object]) -> None:
    folder = STACK / "redis"
    folder.mkdir(mode=0o700, exist_ok=True)
    (STACK / "run").mkdir(exist_ok=True)
    (STACK / "log").mkdir(exist_ok=True)
    conf = folder / "redis.conf"
    write_private(
        conf,
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {config['redis_port']}",
                f"requirepass {config['redis_password']}",
                f"dir {folder}",
                "appendonly yes",
                "appendfsync everysec",
                "save ''",
                "daemonize yes",
                f"pidfile {pid_file('redis')}",
                f"logfile {log_file('redis')}",
                "",
            ]
        ),
    )
    subprocess.run(["redis-server", str(conf)], check=True, capture_output=True)

    def ping() -> bool:
        result = subprocess.run(
            ["redis-cli", "-p", str(config["redis_port"]), "--no-auth-warning", "-a", str(config["redis_password"]),
             "ping"], capture_output=True, text=True,
        )  # fmt: skip
        return result.stdout.strip() == "PONG"

    wait_until(ping, 30, "PONG", "redis")


def manage(*args: str) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", *args], cwd=ROOT, env=service_env(), capture_output=True, text=True
    )
    if result.returncode:
        die(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def prepare_portal() -> None:
    """Migrate, collect the static files and create the administrator (first start only)."""
    manage("migrate", "--noinput")
    marker = STACK / "static" / "staticfiles.json"
    if not marker.exists():
        manage("collectstatic", "--noinput")
    password_file = STACK / "admin-password"
    if not password_file.exists():
        password = secrets.token_urlsafe(15)
        script = (
            "from django.contrib.auth import get_user_model as g; U = g(); "
            "U.objects.filter(username='admin').exists() or "
            f"U.objects.create_superuser(username='admin', email='', password={password!r})"
        )
        manage("shell", "-c", script)
        write_private(password_file, password + "\n")
        print(f"administrator 'admin', password in {password_file}")


def start_web(config: dict[str, object]) -> None:
    argv = [
        str(VENV_BIN / "gunicorn"), "rke2portal.wsgi:application", "--bind", f"127.0.0.1:{config['web_port']}",
        "--workers", str(config["web_workers"]), "--timeout", "120", "--graceful-timeout", "30",
        "--access-logfile", "-", "--error-logfile", "-",
    ]  # fmt: skip
    spawn("web", argv, service_env())
    url = f"http://127.0.0.1:{config['web_port']}/admin/login/"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(answers, 60, "an answer on /admin/login/", "web")


def jobs_dir(worker: str, config: dict[str, object]) -> Path:
    path = STACK / f"jobs-{worker}"
    if not path.exists():
        path.mkdir(mode=0o700)
    size = int(config.get("jobs_tmpfs_mb") or 0)
    if size and is_root() and not os.path.ismount(path):
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0700,nosuid,nodev", "tmpfs", str(path)], check=True
        )
    return path


def start_worker(worker: str, config: dict[str, object]) -> None:
    folder = jobs_dir(worker, config)
    argv = [
        str(VENV_BIN / "celery"), "-A", "rke2portal", "worker", "-Q", "playbooks,celery",
        "-c", str(config["concurrency"]), "-P", "prefork", "-n", f"{worker}@%h", "-l", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    offset = log_file(worker).stat().st_size if log_file(worker).exists() else 0
    spawn(worker, argv, service_env({"JOBS_WORK_DIR": str(folder)}))

    def ready() -> bool:
        with open(log_file(worker), "rb") as handle:
            handle.seek(offset)
            return b" ready." in handle.read()

    wait_until(ready, 90, "'ready'", worker)


def start_beat(config: dict[str, object]) -> None:
    argv = [
        str(VENV_BIN / "celery"), "-A", "rke2portal", "beat", "-l", "INFO",
        "-s", str(STACK / "beat-schedule"),
    ]  # fmt: skip
    spawn("beat", argv, service_env())
    time.sleep(0.5)
    if not running("beat"):
        die(f"beat exited:\n{log_file('beat').read_text(errors='replace')[-2000:]}")


def start(services: list[str]) -> None:
    config = load_config()
    wanted = services or list(SERVICES)
    for service in SERVICES:
        if service not in wanted:
            continue
        if running(service):
            continue
        if service == "postgres":
            start_postgres(config)
        elif service == "redis":
            start_redis(config)
        elif service == "web":
            prepare_portal()
            start_web(config)
        elif service in WORKERS:
            start_worker(service, config)
        elif service == "beat":
            start_beat(config)
        print(f"{service}: started (pid {read_pid(service)})")


def stop_service(service: str, timeout: float) -> None:
    if service == "postgres":
        stop_postgres(timeout)
        return
    pid = read_pid(service)
    if not alive(pid):
        return
    assert pid is not None
    # SIGTERM to the main process only: a Celery worker then shuts down warmly (finishes its running jobs) and
    # stops its pool itself; gunicorn stops gracefully; Redis saves and exits.
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
    if alive(pid):
        print(f"{service}: still running after {timeout:.0f} s; killing it", file=sys.stderr)
        kill_group(pid, signal.SIGKILL)
    kill_group(pid, signal.SIGKILL)  # leftovers of its group (pool processes)


def kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


def stop(services: list[str], timeout: float) -> None:
    for service in reversed(SERVICES):
        if services and service not in services:
            continue
        if running(service):
            stop_service(service, timeout)
            print(f"{service}: stopped")


def status() -> int:
    if not (STACK / "stack.json").exists():
        print(f"no stack in {STACK}")
        return 1
    config = load_config()
    ports = {"postgres": config["pg_port"], "redis": config["redis_port"], "web": config["web_port"]}
    down = 0
    for service in SERVICES:
        pid = read_pid(service)
        up = alive(pid)
        down += not up
        extra = f" port {ports[service]}" if service in ports else ""
        if service in WORKERS:
            extra = f" jobs {STACK / f'jobs-{service}'}"
        print(f"{service:8} {'running' if up else 'stopped':8} pid {pid or '-'}{extra}")
    return 1 if down else 0


def destroy() -> None:
    if STACK.exists():
        stop([], 30)
        for worker in WORKERS:
            path = STACK / f"jobs-{worker}"
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(STACK, ignore_errors=True)
        print(f"removed {STACK}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        print("commands: start [SERVICE...] | stop [--timeout S] [SERVICE...] | restart SERVICE... | "
              "kill SERVICE [SIGNAL] | status | env | destroy")  # fmt: skip
        return 0
    command, rest = argv[0], argv[1:]
    timeout = 60.0
    if "--timeout" in rest:
        index = rest.index("--timeout")
        timeout = float(rest[index + 1])
        del rest[index : index + 2]
    unknown = [name for name in rest if name not in SERVICES] if command in ("start", "stop", "restart") else []
    if unknown:
        die(f"unknown service(s): {', '.join(unknown)} (services: {', '.join(SERVICES)})")
    if command == "start":
        start(rest)
    elif command == "stop":
        stop(rest, timeout)
    elif command == "restart":
        stop(rest, timeout)
        start(rest)
    elif command == "kill":
        if not rest or rest[0] not in SERVICES:
            die("kill SERVICE [SIGNAL]")
        signum = getattr(signal, f"SIG{rest[1].upper().removeprefix('SIG')}") if len(rest) > 1 else signal.SIGKILL
        pid = read_pid(rest[0])
        if alive(pid):
            assert pid is not None
            # SIGKILL takes the whole process group (a crash, an OOM kill of the service); other signals go to
            # the main process, as a service manager sends them (SIGTERM: a Celery worker's warm shutdown).
            if signum == signal.SIGKILL:
                kill_group(pid, signum)
            else:
                os.kill(pid, signum)
    elif command == "status":
        return status()
    elif command == "env":
        if not (STACK / "env").exists():
            die(f"no stack in {STACK}")
        sys.stdout.write((STACK / "env").read_text())
    elif command == "destroy":
        destroy()
    else:
        die(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
