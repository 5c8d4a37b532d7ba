// A job's page: follows ws/jobs/<id>/ while the job runs (the browser's session authenticates
// the socket), appends streamed tokens, updates status and progress, and verifies the receipt
// against this job's input and output with the receipt's opening.
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
  var opening = JSON.parse(document.getElementById("opening-data").textContent);
  var contents = JSON.parse(document.getElementById("contents-data").textContent);
  var lastIndex = -1;
  // The highest ``sequence`` shown: a status event with a lower one was sent before a change
  // already shown (the processes changing a job send its events each in its own order).
  var lastSequence = -1;

  function setText(id, value) {
    var element = document.getElementById(id);
    if (element && value !== undefined && value !== null && value !== "") element.textContent = value;
  }

  // An amount as the page's ``credits`` filter writes it: no trailing zeros.
  function credits(amount) {
    var text = String(amount);
    return text.indexOf(".") === -1 ? text : text.replace(/\.?0+$/, "");
  }

  function setProgress(value) {
    if (typeof value !== "number") return;
    progress.value = value;
    progressText.textContent = Math.round(value) + "%";
  }

  function showStatus(event) {
    if (typeof event.sequence === "number") {
      if (event.sequence < lastSequence) return;
      lastSequence = event.sequence;
    }
    statusBadge.textContent = LABELS[event.status] || event.status;
    statusBadge.className = "badge status-" + event.status;
    setProgress(event.progress);
    setText("job-miner", event.miner_id);
    setText("job-payment", event.payment_status);
    if (event.amount_charged) setText("job-charged", credits(event.amount_charged) + " AITBC");
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
    socket.addEventListener("open", function () {
      liveNote.textContent = "This page follows the job live.";
    });
    socket.addEventListener("close", function (close) {
      if (close.retrying) liveNote.textContent = "Connection lost; reconnecting…";
      else if (close.code !== 1000) liveNote.textContent = "Live updates stopped; reload the page to see the latest status.";
    });
  }

  // What the owner keeps, or shows to whoever should check the receipt: manage.py verify_receipt
  // and POST /v1/receipts/verify read it as it is.
  function bundle() {
    var value = {receipt: receipt, payload: contents.payload, result: contents.result};
    if (opening) value.opening = opening;
    return value;
  }

  function showReceipt(answer) {
    receipt = answer.receipt;
    opening = answer.receipt_opening;
    contents.result = answer.result;
    document.getElementById("receipt-json").textContent = JSON.stringify(receipt, null, 2);
    if (opening) {
      document.getElementById("opening-json").textContent = JSON.stringify(opening, null, 2);
      document.getElementById("opening-box").hidden = false;
    }
    document.getElementById("receipt-box").hidden = false;
    document.getElementById("receipt-missing").hidden = true;
  }

  function loadReceipt() {
    fetch(root.dataset.resultUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (answer) { if (answer && answer.receipt) showReceipt(answer); })
      .catch(function () {});
  }

  function download(event) {
    if (!receipt) return;
    var text = JSON.stringify(bundle(), null, 2);
    event.currentTarget.href = "data:application/json;charset=utf-8," + encodeURIComponent(text);
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
      body: JSON.stringify(bundle())
    })
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (answer.valid === true) {
          result.textContent = "✓ Valid: signed by this coordinator, for this job's input and output.";
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
  document.getElementById("bundle-link").addEventListener("click", download);
  if (root.dataset.socketPath) follow(root.dataset.socketPath);
})();
