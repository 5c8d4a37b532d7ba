// A job's page: follows ws/jobs/<id>/ while the job runs (the browser's session authenticates
// the socket), appends streamed tokens, updates status and progress, and verifies the receipt.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root) return;
  var TERMINAL = ["completed", "failed", "cancelled", "expired"];
  var LABELS = {queued: "Queued", running: "Running", completed: "Completed", failed: "Failed",
                cancelled: "Cancelled", expired: "Expired"};
  var output = document.getElementById("job-output");
  var statusBadge = document.getElementById("job-status");
  var progress = document.getElementById("job-progress");
  var progressText = document.getElementById("job-progress-text");
  var liveNote = document.getElementById("job-live-note");
  var receipt = JSON.parse(document.getElementById("receipt-data").textContent);
  var lastIndex = -1;

  function setText(id, value) {
    var element = document.getElementById(id);
    if (element && value !== undefined && value !== null && value !== "") element.textContent = value;
  }

  function setProgress(value) {
    if (typeof value !== "number") return;
    progress.value = value;
    progressText.textContent = Math.round(value) + "%";
  }

  function showStatus(event) {
    statusBadge.textContent = LABELS[event.status] || event.status;
    statusBadge.className = "badge status-" + event.status;
    setProgress(event.progress);
    setText("job-miner", event.miner_id);
    setText("job-payment", event.payment_status);
    if (event.amount_charged) setText("job-charged", event.amount_charged + " AITBC");
    var usage = event.usage || {};
    setText("usage-prompt", usage.prompt_tokens);
    setText("usage-completion", usage.completion_tokens);
    if (usage.compute_ms !== undefined) setText("usage-compute", usage.compute_ms + " ms");
    if (event.error) {
      var error = document.getElementById("job-error");
      error.textContent = (event.error_code ? event.error_code + ": " : "") + event.error;
      error.hidden = false;
    }
    var result = event.result;
    // The terminal status carries the whole text: it replaces what was streamed.
    if (result && typeof result.text === "string") output.textContent = result.text;
    if (TERMINAL.indexOf(event.status) !== -1) {
      liveNote.hidden = true;
      if (event.status === "completed" && !receipt) loadReceipt();
    }
  }

  function appendToken(event) {
    if (typeof event.index === "number") {
      if (event.index <= lastIndex) return;  // repeated after the snapshot
      lastIndex = event.index;
    }
    output.textContent += event.text || "";
    setProgress(event.progress);
  }

  function follow(path) {
    var socket = window.aitbcSocket(path, function (event) {
      if (event.type === "job.token") appendToken(event);
      else if (event.type === "job.status") showStatus(event);
    });
    if (socket === null) {
      liveNote.textContent = "Live updates are unavailable; reload the page to see the latest status.";
      return;
    }
    socket.addEventListener("close", function (close) {
      if (close.code !== 1000) {
        liveNote.textContent = "Live updates stopped; reload the page to see the latest status.";
      }
    });
  }

  function showReceipt(document_) {
    receipt = document_;
    document.getElementById("receipt-json").textContent = JSON.stringify(document_, null, 2);
    document.getElementById("receipt-box").hidden = false;
    document.getElementById("receipt-missing").hidden = true;
  }

  function loadReceipt() {
    fetch(root.dataset.receiptUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (document_) { if (document_) showReceipt(document_); })
      .catch(function () {});
  }

  function verify() {
    var result = document.getElementById("verify-result");
    if (!receipt) return;
    result.textContent = "Verifying…";
    result.className = "";
    fetch(root.dataset.verifyUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", Accept: "application/json",
                "X-CSRFToken": root.dataset.csrfToken},
      body: JSON.stringify(receipt)
    })
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (answer.valid === true) {
          result.textContent = "✓ Valid: signed by this coordinator.";
          result.className = "verdict-valid";
        } else {
          result.textContent = "✗ Invalid" + (answer.reason ? ": " + answer.reason : answer.detail ? ": " + answer.detail : ".");
          result.className = "verdict-invalid";
        }
      })
      .catch(function () {
        result.textContent = "Could not reach the verifier; try again.";
        result.className = "verdict-invalid";
      });
  }

  document.getElementById("verify-button").addEventListener("click", verify);
  if (root.dataset.socketPath) follow(root.dataset.socketPath);
})();
