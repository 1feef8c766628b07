"""The job page's log filters in a real browser: choosing a host or typing a search reloads the log from its start
with only the matching events (filtered by the events API), and clearing them brings every line back."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from clusters.choices import JobKind, JobStatus
from clusters.models import Job, JobEvent
from clusters.tests.factories import make_cluster

pytestmark = [pytest.mark.browser, pytest.mark.integration]

LINES = "document.querySelectorAll('#job-log .rke2-log-line').length"


def test_log_filters_by_host_and_text(logged_in: Any, live_server: Any, operator: Any, screenshot: Any) -> None:
    cluster = make_cluster("filters", servers=1, workers=2)
    job = Job.objects.create(
        cluster=cluster,
        kind=JobKind.HEALTH,
        status=JobStatus.SUCCESSFUL,
        stages=["health"],
        stage="health",
        stages_completed=1,
        requested_by=operator,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        emitted_events=9,
    )
    hosts = ["filters-s1", "filters-w1", "filters-w2"]
    JobEvent.objects.bulk_create(
        JobEvent(
            job=job,
            counter=counter,
            event="runner_on_ok",
            host_name=hosts[(counter - 1) % 3],
            stage="health",
            task=f"check {counter}",
            stdout=f"ok: [{hosts[(counter - 1) % 3]}] kubelet {'Ready' if counter != 5 else 'NotReady'}",
            created=timezone.now(),
        )
        for counter in range(1, 10)
    )
    page = logged_in
    page.goto(f"{live_server.url}/admin/clusters/job/{job.pk}/change/")
    page.wait_for_selector("#job-live[data-finished=true]")
    assert page.evaluate(LINES) == 9

    page.select_option("#log-host", "filters-w1")
    page.wait_for_function(f"{LINES} === 3 && document.getElementById('job-live').dataset.finished === 'true'")
    assert all("[filters-w1]" in line for line in page.locator("#job-log .rke2-log-line").all_inner_texts())

    page.select_option("#log-host", "")
    page.fill("#log-search", "notready")
    page.wait_for_function(f"{LINES} === 1 && document.getElementById('job-live').dataset.finished === 'true'")
    assert page.locator("#job-log .rke2-log-line").inner_text() == "ok: [filters-w1] kubelet NotReady"
    screenshot("searched")

    page.fill("#log-search", "")
    page.wait_for_function(f"{LINES} === 9")
    assert page.javascript_errors == []
