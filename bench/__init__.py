"""Benchmarks. Each ``bench_*.py`` module has a ``main()`` that prints its measurements and the ratio to a
baseline measured in the same run; ``python -m bench`` runs them all (``python -m bench render`` only
``bench_render``). A ``main()`` returning ``False`` marks a missed target and makes the run exit with status 1."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable

_django_ready = False


def setup_django() -> None:
    """Configure Django on a throwaway SQLite database (migrated, removed at exit). Idempotent."""
    global _django_ready
    if _django_ready:
        return
    workdir = tempfile.mkdtemp(prefix="rke2portal-bench-")
    atexit.register(shutil.rmtree, workdir, True)
    os.environ["RKE2PORTAL_DATA_DIR"] = workdir
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir}/bench.sqlite3"
    os.environ["DJANGO_SETTINGS_MODULE"] = "rke2portal.test_settings"

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    _django_ready = True


def best_time(
    function: Callable[[], object], *, repeat: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The fastest of ``repeat`` runs of ``function``, in seconds of ``clock``.

    ``time.process_time`` measures only this process's CPU, which keeps in-process work (Python, SQLite) comparable
    on a busy machine; keep the default wall clock for anything that waits on other processes."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()  # every run starts from the same collector state
        started = clock()
        function()
        best = min(best, clock() - started)
    return best
