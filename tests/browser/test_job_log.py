"""The job page in a real browser: the live log follows events as they are stored, renders terminal colours
safely, keeps a bounded number of lines, and the progress bar tracks the job to its end.

Events are written by the test, as a worker would write them, while the page polls the events API.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.utils import timezone

from clusters.choices import JobKind, JobStatus
from clusters.models import Job, JobEvent, JobHostSummary
from clusters.tests.factories import make_cluster

pytestmark = [pytest.mark.browser, pytest.mark.integration]

LINES = "document.querySelectorAll('#job-log .rke2-log-line').length"
STAGES = ["initial_master", "joining_masters", "workers", "all"]


@pytest.fixture
def running_job(operator: Any) -> Job:
    cluster = make_cluster("logs", servers=1, workers=2)
    return Job.objects.create(
        cluster=cluster,
        kind=JobKind.INSTALL,
        status=JobStatus.RUNNING,
        stages=STAGES,
        stage=STAGES[0],
        requested_by=operator,
        started_at=timezone.now(),
    )


class EventWriter:
    """Stores events of a job the way the worker does, with increasing counters."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.counter = 0

    def emit(
        self,
        stdout: str,
        *,
        event: str = "verbose",
        host: str = "",
        stage: str = "",
        changed: bool = False,
        failed: bool = False,
    ) -> None:
        self.counter += 1
        JobEvent.objects.create(
            job=self.job,
            counter=self.counter,
            event=event,
            host_name=host,
            stage=stage or self.job.stage,
            stdout=stdout,
            changed=changed,
            failed=failed,
            created=timezone.now(),
        )

    def task(self, name: str, hosts: list[str], *, changed: bool = False) -> None:
        self.emit(f"\r\nTASK [{name}] " + "*" * 40, event="playbook_on_task_start")
        for host in hosts:
            colour, word = ("33", "changed") if changed else ("32", "ok")
            self.emit(f"\x1b[0;{colour}m{word}: [{host}]\x1b[0m", event="runner_on_ok", host=host, changed=changed)


def wait_for_lines(page: Any, count: int) -> None:
    page.wait_for_function(f"{LINES} >= {count}")


def test_log_follows_a_running_job_until_the_progress_bar_is_full(
    logged_in: Any, live_server: Any, running_job: Job, screenshot: Any
) -> None:
    page = logged_in
    job = running_job
    writer = EventWriter(job)
    writer.emit("\x1b[1;35mPLAY [Install the initial master]\x1b[0m " + "*" * 30, event="playbook_on_play_start")
    page.goto(f"{live_server.url}/admin/clusters/job/{job.pk}/change/")
    wait_for_lines(page, 1)
    assert page.locator("#job-status").get_attribute("data-status") == "running"
    assert page.locator("#job-requested-by").inner_text() == "operator"
    assert page.locator("#job-cancel").is_visible()

    hosts = ["logs-s1", "logs-w1", "logs-w2"]
    for index, stage in enumerate(STAGES):
        before = page.evaluate(LINES)
        Job.objects.filter(pk=job.pk).update(stage=stage, stages_completed=index)
        job.stage = stage
        writer.task(f"{stage} : install", hosts, changed=True)
        writer.task(f"{stage} : check", hosts)
        # The page picks up what was stored since its last poll: the log grows while the job runs.
        wait_for_lines(page, before + 2 * (len(hosts) + 2))
        page.wait_for_function(f"document.getElementById('job-progress').getAttribute('aria-valuenow') === '{index}'")
        if index == 1:
            screenshot("running")

    for host in hosts:
        JobHostSummary.objects.create(job=job, host_name=host, ok=8, changed=4)
    writer.emit("\r\nPLAY RECAP " + "*" * 40, event="playbook_on_stats")
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCESSFUL,
        stages_completed=len(STAGES),
        finished_at=timezone.now(),
        emitted_events=writer.counter,
        explanation="",
    )
    page.wait_for_selector("#job-live[data-finished=true]")

    progress = page.locator("#job-progress")
    assert progress.get_attribute("aria-valuenow") == str(len(STAGES))
    assert progress.get_attribute("aria-valuemax") == str(len(STAGES))
    page.wait_for_function(  # the bar's width is animated
        "document.getElementById('job-progress-bar').getBoundingClientRect().width"
        " >= document.getElementById('job-progress').getBoundingClientRect().width - 1"
    )
    assert page.locator("#job-status").inner_text() == "Successful"
    assert page.locator("#job-stages li.rke2-stage-done").count() == len(STAGES)
    assert page.locator('#job-host-counts [data-count="changed"]').inner_text() == "3"
    assert page.locator("#job-cancel-tool").is_hidden()
    # The per-host summary counts every task result of each host.
    row = page.locator('#job-hosts tr[data-host="logs-w1"] td')
    assert row.all_inner_texts() == ["logs-w1", "4", "4", "0", "0", "0"]
    # Colours are rendered as classes, the text stays plain.
    assert page.locator("#job-log span.ansi-fg-3", has_text="changed: [logs-s1]").count() >= 1
    assert page.locator("#job-log span.ansi-bold.ansi-fg-5").first.inner_text().startswith("PLAY [Install")
    assert page.javascript_errors == []
    screenshot("finished")


def test_log_output_is_escaped_capped_and_followed_only_at_the_bottom(
    logged_in: Any, live_server: Any, running_job: Job, settings: Any, screenshot: Any
) -> None:
    page = logged_in
    writer = EventWriter(running_job)
    writer.emit(
        '<img src=x onerror="window.injected=1"><script>window.injected=2</script> \x1b[31m<b>not bold</b>\x1b[0m'
    )
    page.goto(f"{live_server.url}/admin/clusters/job/{running_job.pk}/change/")
    wait_for_lines(page, 1)
    first = page.locator("#job-log .rke2-log-line").first
    assert "<script>window.injected=2</script>" in first.inner_text()
    assert "<b>not bold</b>" in first.inner_text()
    assert page.locator("#job-log img, #job-log script, #job-log b").count() == 0
    assert page.evaluate("window.injected === undefined")

    # More lines than the page keeps: the oldest go, a notice links to the full log.
    writer.emit("\n".join(f"line {n:05d}" for n in range(1, 2501)))
    page.wait_for_function("document.querySelector('#job-log').lastElementChild.textContent === 'line 02500'")
    assert page.evaluate(LINES) == 2000
    assert page.locator("#log-truncated").is_visible()
    assert page.locator("#job-log .rke2-log-line").first.inner_text() == "line 00501"
    full_log = page.locator("#log-full").get_attribute("href")
    assert full_log.startswith(f"/api/jobs/{running_job.pk}/stdout/")
    at_bottom = (
        "(() => { const log = document.getElementById('job-log');"
        " return log.scrollTop + log.clientHeight >= log.scrollHeight - 30; })()"
    )
    assert page.evaluate(at_bottom)

    # Scrolled up: new lines arrive without moving the view, until the reader follows the end again.
    page.evaluate("document.getElementById('job-log').scrollTop = 0")
    page.locator("#log-follow").wait_for(state="visible")
    writer.emit("after scrolling up")
    page.wait_for_function("document.querySelector('#job-log').lastElementChild.textContent === 'after scrolling up'")
    assert page.evaluate("document.getElementById('job-log').scrollTop") < 50
    screenshot("paused")
    page.click("#log-follow")
    assert page.evaluate(at_bottom)
    assert page.locator("#log-follow").is_hidden()
    assert page.javascript_errors == []


def test_ansi_converter(logged_in: Any, live_server: Any, running_job: Job) -> None:
    page = logged_in
    page.goto(f"{live_server.url}/admin/clusters/job/{running_job.pk}/change/")
    page.wait_for_function("window.Rke2Ansi !== undefined")
    cases = {
        "plain <tag> & 'quotes'": "plain &lt;tag&gt; &amp; &#39;quotes&#39;",
        "\x1b[0;32mok\x1b[0m done": '<span class="ansi-fg-2">ok</span> done',
        "\x1b[1;91mbright\x1b[22m normal": (
            '<span class="ansi-fg-9 ansi-bold">bright</span><span class="ansi-fg-9"> normal</span>'
        ),
        "\x1b[38;5;208morange\x1b[39m": '<span style="color:rgb(255,135,0)">orange</span>',
        "\x1b[38;2;1;2;300mtrue\x1b[m": '<span style="color:rgb(1,2,255)">true</span>',
        "\x1b[2K\x1b[1Gcleared\x1b]0;title\x07": "cleared",
        "\x1b[44m<b>\x1b[0m": '<span class="ansi-bg-4">&lt;b&gt;</span>',
    }
    results = page.evaluate("cases => cases.map(text => Rke2Ansi.toHtml(text))", list(cases))
    assert dict(zip(cases, results, strict=True)) == cases
    # State carries across calls of one converter (a colour spanning lines).
    carried = page.evaluate(
        "() => { const c = new Rke2Ansi.Converter(); return [c.toHtml('\\x1b[33mone'), c.toHtml('two\\x1b[0m')]; }"
    )
    assert carried == ['<span class="ansi-fg-3">one</span>', '<span class="ansi-fg-3">two</span>']
    assert json.dumps(page.javascript_errors) == "[]"
