// A swarm task's page follows its running shares on their jobs' sockets (ws/jobs/<id>/): each
// status event updates the share's row, and once a share's job ends the page reloads, since the
// task may have moved on (an answer in, a member replaced, the consensus decided).
(function () {
  "use strict";
  var TERMINAL = ["completed", "failed", "cancelled", "expired"];
  var jobs = JSON.parse(document.getElementById("live-jobs").textContent);
  var note = document.getElementById("live-note");
  var reloading = false;

  jobs.forEach(function (jobId) {
    var cell = document.querySelector('[data-job-status="' + jobId + '"]');
    var lastSequence = -1;
    var socket = window.aitbcSocket("/ws/jobs/" + jobId + "/", function (event) {
      if (event.type !== "job.status") return;
      // An event with a lower ``sequence`` than one shown tells an older status: it is passed over.
      if (typeof event.sequence === "number") {
        if (event.sequence < lastSequence) return;
        lastSequence = event.sequence;
      }
      if (cell) cell.textContent = event.status;
      if (TERMINAL.indexOf(event.status) !== -1 && !reloading) {
        reloading = true;
        // The task advances in the transaction's wake: give it a moment before reading it again.
        setTimeout(function () { window.location.reload(); }, 500);
      }
    });
    if (socket === null) note.textContent = "Live updates are unavailable; reload the page to see the latest status.";
  });
})();
