// The pages' live parts share this: ``aitbcSocket(path, onEvent)`` opens a WebSocket to
// ``path`` on this host (wss:// behind https) and hands each JSON message to ``onEvent``.
// It returns the socket, for open and close listeners, or null where none can be opened.
(function () {
  "use strict";
  window.aitbcSocket = function (path, onEvent) {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket;
    try {
      socket = new WebSocket(scheme + window.location.host + path);
    } catch (error) {
      return null;
    }
    socket.addEventListener("message", function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (error) { return; }
      onEvent(event);
    });
    return socket;
  };
})();
