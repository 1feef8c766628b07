/*
 * Live log of a job: polls the job's events (GET /api/jobs/<id>/events/?after=<counter>) about once a second,
 * appends their output with colours, follows the end unless the reader scrolled up, keeps at most a fixed number
 * of lines on screen, and updates the progress bar, host counts and per-host summary. The host list and the search
 * box filter the log on the server (?host=, ?search=): changing them reloads the log from its start.
 */
(function () {
  "use strict";

  var STATUS_TONES = { successful: "ok", running: "busy", pending: "wait", failed: "bad", canceled: "muted" };
  var STATUS_LABELS = { successful: "Successful", running: "Running", pending: "Pending", failed: "Failed", canceled: "Canceled" };
  var FOLLOW_SLACK_PX = 24;
  var MAX_RETRY_MS = 10000;

  function start() {
    var configNode = document.getElementById("job-log-config");
    if (!configNode || !window.Rke2Ansi) { return; }
    var config = JSON.parse(configNode.textContent);
    var root = document.getElementById("job-live");
    var log = document.getElementById("job-log");
    var stateText = document.getElementById("log-state");
    var truncated = document.getElementById("log-truncated");
    var followButton = document.getElementById("log-follow");

    var after = 0;
    var lines = 0;
    var dropped = 0;
    var following = true;
    var retryDelay = config.pollInterval;
    var hosts = {};
    var hostOrder = [];
    var hostSelect = document.getElementById("log-host");
    var searchInput = document.getElementById("log-search");
    var filterHost = "";
    var filterSearch = "";
    var generation = 0;
    var timer = null;
    var inFlight = false;
    var searchTimer = null;
    var knownHosts = {};

    if (hostSelect) {
      Array.prototype.forEach.call(hostSelect.options, function (option) { knownHosts[option.value] = true; });
    }

    function filtered() { return Boolean(filterHost || filterSearch); }

    function offerHost(name) {
      if (!hostSelect || !name || knownHosts[name]) { return; }
      knownHosts[name] = true;
      var option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      hostSelect.appendChild(option);
    }

    function applyFilter() {
      var host = hostSelect ? hostSelect.value : "";
      var search = searchInput ? searchInput.value : "";
      if (host === filterHost && search === filterSearch) { return; }
      filterHost = host;
      filterSearch = search;
      generation += 1;
      after = 0;
      lines = 0;
      dropped = 0;
      hosts = {};
      hostOrder = [];
      log.replaceChildren();
      truncated.hidden = true;
      root.setAttribute("data-finished", "false");
      root.setAttribute("data-filter", filtered() ? "true" : "false");
      stateText.textContent = "Loading…";
      if (!inFlight) { schedule(0); }
    }

    if (hostSelect) { hostSelect.addEventListener("change", applyFilter); }
    if (searchInput) {
      searchInput.addEventListener("input", function () {
        window.clearTimeout(searchTimer);
        searchTimer = window.setTimeout(applyFilter, 300);
      });
    }

    truncated.querySelector("[data-max-lines]").textContent = config.maxLines.toLocaleString("en");

    function atBottom() {
      return log.scrollTop + log.clientHeight >= log.scrollHeight - FOLLOW_SLACK_PX;
    }

    function setFollowing(value) {
      following = value;
      followButton.hidden = following;
      log.classList.toggle("rke2-log-paused", !following);
    }

    log.addEventListener("scroll", function () {
      var bottom = atBottom();
      if (bottom !== following) { setFollowing(bottom); }
    });
    followButton.addEventListener("click", function () {
      setFollowing(true);
      log.scrollTop = log.scrollHeight;
    });

    // --- log lines ------------------------------------------------------------------------------------------

    function appendEvents(events) {
      var fragment = document.createDocumentFragment();
      var added = 0;
      events.forEach(function (event) {
        offerHost(event.host_name);
        if (!filtered()) { tallyHost(event); }
        if (!event.stdout) { return; }
        var converter = new window.Rke2Ansi.Converter();
        var text = event.stdout.replace(/\r\n/g, "\n").replace(/\n$/, "");
        text.split("\n").forEach(function (line) {
          var div = document.createElement("div");
          div.className = "rke2-log-line" + (event.failed ? " rke2-log-failed" : "");
          div.setAttribute("data-counter", String(event.counter));
          div.innerHTML = converter.toHtml(line) || "&#8203;";
          fragment.appendChild(div);
          added += 1;
        });
      });
      if (!added) { return; }
      log.appendChild(fragment);
      lines += added;
      while (lines > config.maxLines && log.firstChild) {
        log.removeChild(log.firstChild);
        lines -= 1;
        dropped += 1;
      }
      truncated.hidden = dropped === 0;
      if (following) { log.scrollTop = log.scrollHeight; }
    }

    // --- per-host summary -------------------------------------------------------------------------------------

    function tallyHost(event) {
      var name = event.host_name;
      if (!name || event.event.indexOf("runner_on_") !== 0 || event.event === "runner_on_start") { return; }
      if (!hosts[name]) {
        hosts[name] = { ok: 0, changed: 0, failed: 0, unreachable: 0, skipped: 0 };
        hostOrder.push(name);
      }
      var row = hosts[name];
      if (event.event === "runner_on_ok") { row[event.changed ? "changed" : "ok"] += 1; }
      else if (event.event === "runner_on_failed") { row[event.failed ? "failed" : "ok"] += 1; }
      else if (event.event === "runner_on_unreachable") { row.unreachable += 1; }
      else if (event.event === "runner_on_skipped") { row.skipped += 1; }
    }

    function renderHosts() {
      if (!hostOrder.length) { return; }
      var body = document.querySelector("#job-hosts tbody");
      var rows = document.createDocumentFragment();
      hostOrder.slice().sort().forEach(function (name) {
        var counts = hosts[name];
        var tr = document.createElement("tr");
        tr.setAttribute("data-host", name);
        if (counts.failed || counts.unreachable) { tr.className = "rke2-host-bad"; }
        [name, counts.ok, counts.changed, counts.failed, counts.unreachable, counts.skipped].forEach(function (value) {
          var td = document.createElement("td");
          td.textContent = String(value);
          tr.appendChild(td);
        });
        rows.appendChild(tr);
      });
      body.replaceChildren(rows);
    }

    // --- job state --------------------------------------------------------------------------------------------

    function renderJob(job, finished) {
      var badge = document.getElementById("job-status");
      badge.textContent = STATUS_LABELS[job.status] || job.status;
      badge.setAttribute("data-status", job.status);
      badge.className = "rke2-badge rke2-badge-" + (STATUS_TONES[job.status] || "muted");

      var total = job.stages.length;
      var done = Math.min(job.stages_completed, total);
      var percent = total ? Math.round((done / total) * 100) : (job.status === "successful" ? 100 : 0);
      var progress = document.getElementById("job-progress");
      progress.setAttribute("aria-valuemax", String(total));
      progress.setAttribute("aria-valuenow", String(done));
      progress.setAttribute("data-status", job.status);
      document.getElementById("job-progress-bar").style.width = percent + "%";
      document.getElementById("job-progress-text").textContent =
        done + " of " + total + " stage" + (total === 1 ? "" : "s") + (job.stage && job.status === "running" ? " · running " + job.stage : "");

      var stageList = document.getElementById("job-stages");
      stageList.replaceChildren.apply(stageList, job.stages.map(function (stage, index) {
        var li = document.createElement("li");
        li.textContent = stage;
        li.setAttribute("data-stage", stage);
        if (index < done) { li.className = "rke2-stage-done"; }
        else if (index === done && job.status === "running") { li.className = "rke2-stage-current"; }
        else if (index === done && (job.status === "failed" || job.status === "canceled")) { li.className = "rke2-stage-failed"; }
        return li;
      }));

      ["ok", "changed", "failed", "unreachable"].forEach(function (key) {
        var cell = document.querySelector('#job-host-counts [data-count="' + key + '"]');
        if (cell) { cell.textContent = String(job.host_counts[key] || 0); }
      });

      var explanation = document.getElementById("job-explanation");
      explanation.textContent = job.explanation || "";
      explanation.hidden = !job.explanation;

      if (finished) {
        var cancel = document.getElementById("job-cancel-tool");
        if (cancel) { cancel.hidden = true; }
      }
    }

    // --- polling ----------------------------------------------------------------------------------------------

    function schedule(delay) {
      window.clearTimeout(timer);
      timer = window.setTimeout(poll, delay);
    }

    function poll() {
      timer = null;
      if (inFlight) { return; }
      inFlight = true;
      var mine = generation;
      var url = config.eventsUrl + "?after=" + after + "&limit=" + config.pageSize;
      if (filterHost) { url += "&host=" + encodeURIComponent(filterHost); }
      if (filterSearch) { url += "&search=" + encodeURIComponent(filterSearch); }
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (response) {
          if (response.status === 401 || response.status === 403) {
            throw { fatal: true, message: "Your session has ended: reload the page after logging in again." };
          }
          if (!response.ok) { throw { message: "The server answered " + response.status + "; retrying." }; }
          return response.json();
        })
        .then(function (page) {
          inFlight = false;
          if (mine !== generation) { schedule(0); return; }
          retryDelay = config.pollInterval;
          appendEvents(page.results);
          renderHosts();
          after = page.next_after;
          renderJob(page.job, page.finished);
          var more = page.results.length >= config.pageSize;
          if (page.finished && !more) {
            stateText.textContent = filtered() ? "Finished; showing the matching events only." : "Finished: " + after + " events.";
            root.setAttribute("data-finished", "true");
            return;
          }
          stateText.textContent = following ? "Following…" : "Paused (scrolled up); still loading.";
          schedule(more ? 0 : config.pollInterval);
        })
        .catch(function (error) {
          inFlight = false;
          if (mine !== generation) { schedule(0); return; }
          stateText.textContent = (error && error.message) || "Connection lost; retrying.";
          if (error && error.fatal) { return; }
          retryDelay = Math.min(retryDelay * 2, MAX_RETRY_MS);
          schedule(retryDelay);
        });
    }

    renderJob(config.job, false);
    setFollowing(true);
    poll();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
