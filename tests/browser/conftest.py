"""Fixtures of the browser tests: Debian's Chromium driven by Playwright against pytest-django's live server.

Screenshots go to ``test-artifacts/`` at the repository root (git-ignored); a failing test leaves one named after
it. When Chromium is missing the tests are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker import job_worker, worker_factory  # noqa: F401  (fixtures: real Celery worker processes)

# Playwright's sync API runs an asyncio loop in the test's thread; Django's ORM refuses to run in a thread with a
# running loop unless told that this is intended. The test code itself is synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("BROWSER_TESTS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
OPERATOR_PASSWORD = "operator-password-1234"


def require_chromium() -> None:
    """Skip the calling test when Chromium or Playwright is missing; under ``CI=true`` fail it instead."""
    problems = []
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).is_file():
        problems.append(f"no Chromium at {CHROMIUM}")
    try:
        import playwright  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed")
    if not problems:
        return
    message = "browser tests unavailable: " + "; ".join(problems)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _artifact_name(node_name: str, label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{node_name}-{label}").strip("-") + ".png"


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest, settings: Any) -> Iterator[Any]:
    # The live server speaks plain HTTP.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    context = chromium.new_context(viewport={"width": 1440, "height": 1000}, locale="en-US", timezone_id="UTC")
    browser_page = context.new_page()
    browser_page.set_default_timeout(15_000)
    errors: list[str] = []
    browser_page.on("pageerror", lambda exc: errors.append(str(exc)))
    browser_page.javascript_errors = errors  # type: ignore[attr-defined]
    try:
        yield browser_page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            browser_page.screenshot(path=str(ARTIFACTS / _artifact_name(request.node.name, "failure")), full_page=True)
        context.close()


@pytest.fixture
def screenshot(page: Any, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``screenshot(label)`` saves the page as ``test-artifacts/<test>-<label>.png`` and returns the path."""

    def take(label: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / _artifact_name(request.node.name, label)
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def operator(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("operator", "operator@example.com", OPERATOR_PASSWORD)


@pytest.fixture
def logged_in(page: Any, live_server: Any, operator: Any) -> Any:
    """The page, logged in to the admin as the operator."""
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", operator.username)
    page.fill("#id_password", OPERATOR_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    return page


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
