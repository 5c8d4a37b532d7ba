// The network page: the server-rendered snapshot, then, for a signed-in user, live
// ``network.stats`` events from ws/dashboard/, drawn as inline SVG sparklines and bars. Without a
// socket the snapshot stays.
(function () {
  "use strict";
  var root = document.getElementById("network");
  if (!root) return;
  var SVG = "http://www.w3.org/2000/svg";
  var SERIES = ["jobs_per_minute", "tokens_per_second", "median_wait_seconds", "median_run_seconds", "miners_online"];
  var HISTORY = 60;  // points kept: five minutes of updates every 5 s
  var WIDTH = 200;  // the sparklines' viewBox
  var HEIGHT = 40;
  var history = {};
  var status = document.getElementById("network-live");
  SERIES.forEach(function (name) { history[name] = []; });

  // The points always span the whole width: one point is a level line across it, and each new
  // point narrows the steps, so the line never shrinks to a dash at the chart's right end.
  function sparkPath(points) {
    if (!points.length) return "";
    var max = Math.max.apply(null, points) || 1;
    var y = function (value) { return (HEIGHT - 2 - (Math.max(0, value) / max) * (HEIGHT - 4)).toFixed(1); };
    if (points.length === 1) return "M0 " + y(points[0]) + " L" + WIDTH + " " + y(points[0]);
    var step = WIDTH / (points.length - 1);
    return points.map(function (value, i) {
      return (i ? "L" : "M") + (i * step).toFixed(1) + " " + y(value);
    }).join(" ");
  }

  function sparkline(name) {
    var svg = document.getElementById("spark-" + name);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var path = sparkPath(history[name]);
    if (!path) return;
    var line = document.createElementNS(SVG, "path");
    line.setAttribute("d", path);
    line.setAttribute("class", "spark-line");
    svg.appendChild(line);
  }

  function queueBars(depths) {
    var chart = document.getElementById("queue-chart");
    var models = Object.keys(depths || {}).sort();
    chart.textContent = "";
    if (!models.length) {
      var empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = "No job is waiting.";
      chart.appendChild(empty);
      return;
    }
    var max = Math.max.apply(null, models.map(function (m) { return depths[m]; }).concat([1]));
    var rowHeight = 24;
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 400 " + models.length * rowHeight);
    svg.setAttribute("class", "bars-chart");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", models.map(function (m) { return m + ": " + depths[m] + " queued"; }).join(", "));
    models.forEach(function (model, i) {
      var y = i * rowHeight;
      var label = document.createElementNS(SVG, "text");
      label.setAttribute("x", 0);
      label.setAttribute("y", y + 16);
      label.textContent = model;
      var bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("x", 140);
      bar.setAttribute("y", y + 4);
      bar.setAttribute("height", 16);
      bar.setAttribute("width", Math.max(2, (depths[model] / max) * 220));
      bar.setAttribute("class", "bar");
      var value = document.createElementNS(SVG, "text");
      value.setAttribute("x", 140 + Math.max(2, (depths[model] / max) * 220) + 6);
      value.setAttribute("y", y + 16);
      value.textContent = depths[model];
      svg.appendChild(label);
      svg.appendChild(bar);
      svg.appendChild(value);
    });
    chart.appendChild(svg);
  }

  function show(stats) {
    SERIES.forEach(function (name) {
      var value = stats[name];
      var element = document.getElementById("stat-" + name);
      element.textContent = value === null || value === undefined ? "—" : value;
      if (typeof value === "number") {
        history[name].push(value);
        if (history[name].length > HISTORY) history[name].shift();
      }
      sparkline(name);
    });
    queueBars(stats.queue_depth);
  }

  show(JSON.parse(document.getElementById("network-snapshot").textContent));

  if (!root.dataset.socketPath) return;  // signed out: the page says how to see the figures live
  var socket = window.aitbcSocket(root.dataset.socketPath, function (event) {
    if (event.type === "dashboard.event" && event.kind === "network.stats" && event.data) show(event.data);
  });
  if (socket === null) return;
  socket.addEventListener("open", function () { status.textContent = "Live."; });
  socket.addEventListener("close", function (close) {
    status.textContent = close.retrying
      ? "Connection lost; reconnecting… (figures as of the last update)"
      : "Live updates are off; figures as of the last update.";
  });
})();
