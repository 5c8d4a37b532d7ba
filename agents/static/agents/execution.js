// An execution's page: follows ws/executions/<id>/ while it runs (the browser's session
// authenticates the socket), updating its status, each step's row and its box in the picture.
// Once it has ended the page is loaded again, for its log and receipt. Where no socket can be
// opened it is loaded again every 3 s instead.
(function () {
  "use strict";
  var root = document.getElementById("execution");
  if (!root || !root.dataset.socket) return;
  var TERMINAL = ["completed", "failed", "cancelled"];
  var ended = false;

  function setText(element, value) {
    if (element) element.textContent = value === null || value === undefined ? "" : String(value);
  }

  function showStep(stepId, state) {
    var row = root.querySelector('tr[data-step="' + CSS.escape(stepId) + '"]');
    if (row) {
      setText(row.querySelector(".step-status"), state.status);
      setText(row.querySelector(".step-attempts"), state.attempts);
      var job = row.querySelector(".step-job");
      if (job && state.job_id) {
        var link = document.createElement("a");
        link.className = "mono";
        link.href = "/jobs/" + state.job_id + "/";
        link.textContent = state.job_id.slice(0, 12) + "…";
        job.replaceChildren(link);
      }
      var output = state.output;
      if (output !== null && output !== undefined && typeof output !== "string") output = JSON.stringify(output);
      setText(row.querySelector(".step-output"), (output || "").slice(0, 200) + (state.error ? " " + state.error : ""));
    }
    var box = root.querySelector('g.dag-step[data-step="' + CSS.escape(stepId) + '"]');
    if (box) {
      box.setAttribute("class", "dag-step dag-" + state.status);
      setText(box.querySelector(".dag-state"), box.dataset.kind + " · " + state.status);
    }
  }

  function show(event) {
    if (event.type !== "execution.status") return;
    setText(document.getElementById("execution-status"), event.status);
    setText(document.getElementById("execution-done"), event.completed_steps);
    setText(document.getElementById("execution-cost"), event.total_cost);
    Object.keys(event.step_states || {}).forEach(function (stepId) { showStep(stepId, event.step_states[stepId]); });
    if (TERMINAL.indexOf(event.status) !== -1 && !ended) {
      ended = true;
      window.location.reload();
    }
  }

  var socket = window.aitbcSocket ? window.aitbcSocket(root.dataset.socket, show) : null;
  if (!socket) setTimeout(function () { window.location.reload(); }, 3000);
})();
