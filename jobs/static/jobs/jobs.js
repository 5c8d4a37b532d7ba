// My jobs, live: when one of the user's jobs changes (``job.updated`` on ws/dashboard/), the
// list (rows and pages) is read again from the server, at most once a second; once more when
// the socket opens, for changes made while the page loaded. Without a socket it stays as loaded.
(function () {
  "use strict";
  var root = document.getElementById("my-jobs");
  if (!root) return;
  var list = document.getElementById("job-list");
  var status = document.getElementById("jobs-live");
  var MIN_INTERVAL_MS = 1000;
  var timer = null;
  var reading = false;
  var readAgain = false;
  var lastRead = 0;
  var signedOut = false;
  var socket = null;

  function read() {
    timer = null;
    if (reading) {
      readAgain = true;
      return;
    }
    reading = true;
    lastRead = Date.now();
    fetch(root.dataset.listUrl, { credentials: "same-origin", redirect: "error", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 403) {
          signedOut = true;
          if (socket) socket.close();
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        replaceList(html);
        if (socket && socket.readyState === WebSocket.OPEN) status.textContent = "Live.";
      })
      .catch(function () {
        status.textContent = signedOut
          ? "You are signed out: reload the page to sign in again."
          : "Could not refresh the list; reload the page.";
      })
      .then(function () {
        reading = false;
        if (readAgain && !signedOut) {
          readAgain = false;
          schedule();
        }
      });
  }

  function replaceList(html) {
    // Keyboard focus on a row's link survives the refresh.
    var focused = list.contains(document.activeElement) ? document.activeElement.closest("tr") : null;
    var jobId = focused ? focused.getAttribute("data-job-id") : null;
    list.innerHTML = html;
    if (jobId) {
      var link = list.querySelector('tr[data-job-id="' + jobId + '"] a');
      if (link) link.focus();
    }
  }

  function schedule() {
    if (timer === null) timer = setTimeout(read, Math.max(0, lastRead + MIN_INTERVAL_MS - Date.now()));
  }

  function concerns(jobId) {
    // New jobs appear on the first page; on later pages only the rows shown can change.
    return root.hasAttribute("data-first-page") || list.querySelector('tr[data-job-id="' + jobId + '"]') !== null;
  }

  socket = window.aitbcSocket(root.dataset.socketPath, function (event) {
    if (event.type === "dashboard.event" && event.kind === "job.updated" && event.data && concerns(event.data.job_id)) {
      schedule();
    }
  });
  if (socket === null) return;
  socket.addEventListener("open", function () {
    status.textContent = "Live.";
    schedule();
  });
  socket.addEventListener("close", function (close) {
    if (signedOut) return;
    status.textContent = close.retrying
      ? "Connection lost; reconnecting…"
      : "Live updates are off; reload the page for the latest.";
  });
})();
