// The admin home's health panel follows the network feed: each event of ws/dashboard/, and each
// reconnection after the feed was lost, asks for the panel again (at most once every two seconds)
// and puts the fresh one in its place.
(function () {
  "use strict";
  var panel = document.getElementById("health");
  if (!panel || !window.aitbcSocket) { return; }
  var url = panel.getAttribute("data-refresh");
  var waiting = false;
  function refresh() {
    waiting = false;
    fetch(url, {credentials: "same-origin"}).then(function (response) {
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (!html) { return; }
      var fresh = document.createElement("div");
      fresh.innerHTML = html;
      var replacement = fresh.querySelector("#health");
      var current = document.getElementById("health");
      if (replacement && current) { current.replaceWith(replacement); }
    }).catch(function () {});
  }
  function soon() {
    if (!waiting) {
      waiting = true;
      setTimeout(refresh, 2000);
    }
  }
  var feed = window.aitbcSocket("/ws/dashboard/", soon);
  if (feed) { feed.addEventListener("open", soon); }
})();
