// My jobs, live: when one of the user's jobs changes (``job.updated`` on ws/dashboard/), the
// rows are read again from the server, at most once a second; once more when the socket opens,
// for changes made while the page loaded. Without a socket the list stays as loaded.
(function () {
  "use strict";
  var root = document.getElementById("my-jobs");
  if (!root) return;
  var rows = document.getElementById("job-rows");
  var status = document.getElementById("jobs-live");
  var MIN_INTERVAL_MS = 1000;
  var timer = null;
  var reading = false;
  var readAgain = false;
  var lastRead = 0;

  function read() {
    timer = null;
    if (reading) {
      readAgain = true;
      return;
    }
    reading = true;
    lastRead = Date.now();
    fetch(root.dataset.rowsUrl, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) { rows.innerHTML = html; })
      .catch(function () { status.textContent = "Could not refresh the list; reload the page."; })
      .then(function () {
        reading = false;
        if (readAgain) {
          readAgain = false;
          schedule();
        }
      });
  }

  function schedule() {
    if (timer === null) timer = setTimeout(read, Math.max(0, lastRead + MIN_INTERVAL_MS - Date.now()));
  }

  function concerns(jobId) {
    // New jobs appear on the first page; on later pages only the rows shown can change.
    return root.hasAttribute("data-first-page") || rows.querySelector('tr[data-job-id="' + jobId + '"]') !== null;
  }

  var socket = window.aitbcSocket(root.dataset.socketPath, function (event) {
    if (event.type === "dashboard.event" && event.kind === "job.updated" && event.data && concerns(event.data.job_id)) {
      schedule();
    }
  });
  if (socket === null) return;
  socket.addEventListener("open", function () {
    status.textContent = "Live.";
    schedule();
  });
  socket.addEventListener("close", function () {
    status.textContent = "Live updates are off; reload the page for the latest.";
  });
})();
