// The pages' live parts share this: ``aitbcSocket(path, onEvent)`` opens a WebSocket to
// ``path`` on this host (wss:// behind https) and hands each JSON message to ``onEvent``.
// When the server goes away (a restart closes sockets with 4503; a lost connection is 1006) it
// opens a new one after 1, 2, 4… up to 30 seconds, with jitter. It does not retry after a normal
// close, or when the server refused the socket (4401 signed out, 4403 forbidden, 4404 not found).
// It returns a handle, or null where no socket can be opened: the handle dispatches "open" at
// every (re)connection and "close" with ``code`` and ``retrying``; ``close()`` stops it for good.
(function () {
  "use strict";
  var FINAL = [1000, 4401, 4403, 4404];
  var MAX_DELAY_MS = 30000;

  window.aitbcSocket = function (path, onEvent) {
    var url = (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + path;
    var handle = new EventTarget();
    var socket = null;
    var stopped = false;
    var failures = 0;

    function dispatch(type, fields) {
      var event = new Event(type);
      Object.assign(event, fields);
      handle.dispatchEvent(event);
    }

    function connect() {
      try {
        socket = new WebSocket(url);
      } catch (error) {
        return false;
      }
      socket.addEventListener("open", function () {
        failures = 0;
        dispatch("open", {});
      });
      socket.addEventListener("message", function (message) {
        var event;
        try { event = JSON.parse(message.data); } catch (error) { return; }
        onEvent(event);
      });
      socket.addEventListener("close", function (close) {
        var retrying = !stopped && FINAL.indexOf(close.code) === -1;
        dispatch("close", { code: close.code, retrying: retrying });
        if (!retrying) return;
        var delay = Math.min(MAX_DELAY_MS, 1000 * Math.pow(2, failures));
        failures += 1;
        setTimeout(function () { if (!stopped) connect(); }, delay * (0.75 + Math.random() / 2));
      });
      return true;
    }

    handle.close = function () {
      stopped = true;
      if (socket) socket.close();
    };
    Object.defineProperty(handle, "readyState", {
      get: function () { return socket ? socket.readyState : WebSocket.CLOSED; },
    });
    return connect() ? handle : null;
  };
})();
