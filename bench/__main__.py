"""Run every benchmark module of this package (``bench_*.py``), or those named on the command line."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    # The baselines run ansible-playbook through plain ansible-runner: find it beside this Python when the
    # virtualenv is not on the PATH (``.venv/bin/python -m bench``).
    if not shutil.which("ansible-playbook"):
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    package_dir = Path(__file__).resolve().parent
    names = sorted(info.name for info in pkgutil.iter_modules([str(package_dir)]) if info.name.startswith("bench_"))
    if argv:
        wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in argv}
        unknown = wanted - set(names)
        if unknown:
            print(f"Unknown benchmark(s): {', '.join(sorted(unknown))}. Available: {', '.join(names)}", file=sys.stderr)
            return 2
        names = [name for name in names if name in wanted]
    status = 0
    for name in names:
        print(f"== {name}", flush=True)
        if importlib.import_module(f"{__package__}.{name}").main() is False:
            status = 1
        print(flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
