"""Every third-party package the code imports is declared: runtime code in requirements.txt, tests and tooling
in requirements-dev.txt, so that the production image (runtime packages only) never misses one."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("clusters", "inventory", "rke2portal")
FIRST_PARTY = {"clusters", "inventory", "rke2portal", "tests", "bench", "conftest", "manage"}
# Code that runs on the test hosts with their own Python, not in the portal's environment.
OFF_CONTROLLER = ("tests/standin_rke2/rke2standin",)
_REQUIREMENT_RE = re.compile(r"^([A-Za-z0-9_.-]+)")


def _declared(path: Path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            names |= _declared(path.parent / line[3:].strip())
        elif line and not line.startswith("#") and (match := _REQUIREMENT_RE.match(line)):
            names.add(_normalise(match.group(1)))
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_imports(files: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], path)
    return found


def _python_files(*folders: str) -> list[Path]:
    files = []
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/" in relative or relative.startswith(OFF_CONTROLLER) or ".venv" in path.parts:
                continue
            files.append(path)
    return files


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _undeclared(files: list[Path], declared: set[str]) -> list[str]:
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for module, path in sorted(_top_level_imports(files).items()):
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module == "__future__":
            continue
        owners = {_normalise(name) for name in distributions.get(module, [])}
        if not owners:
            problems.append(f"{module} (imported in {_shown(path)}) is not installed")
        elif not owners & declared:
            problems.append(f"{module} (imported in {_shown(path)}) comes from {sorted(owners)}, not declared")
    return problems


def test_runtime_code_imports_only_runtime_requirements() -> None:
    declared = _declared(ROOT / "requirements.txt")
    files = _python_files(*RUNTIME_PACKAGES)
    files = [path for path in files if "/tests/" not in path.relative_to(ROOT).as_posix()]
    assert files
    assert _undeclared(files, declared) == []


def test_tests_and_tooling_import_only_declared_requirements() -> None:
    declared = _declared(ROOT / "requirements-dev.txt")
    files = _python_files(*RUNTIME_PACKAGES, "tests", "bench") + [ROOT / "conftest.py", ROOT / "manage.py"]
    assert _undeclared(files, declared) == []


def test_an_undeclared_import_is_reported(tmp_path: Path) -> None:
    module = tmp_path / "uses_yaml.py"
    module.write_text("import yaml\n")
    assert _undeclared([module], {"django"}) and not _undeclared([module], {"pyyaml"})


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_requirement_is_pinned(name: str) -> None:
    for line in (ROOT / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-r ")):
            assert "==" in line, f"{name}: {line} is not pinned"
