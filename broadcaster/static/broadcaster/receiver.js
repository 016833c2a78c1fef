// The receiver page: every message, the connection state and the live count (frames and
// resuming: connection.js, docs/PROTOCOL.md). Messages are inserted with textContent, never as HTML.
(function () {
  "use strict";
  var list = document.getElementById("messages");
  var empty = document.getElementById("empty");
  var count = document.getElementById("count");
  var state = document.getElementById("state");
  var notice = document.getElementById("notice");
  var retry = document.getElementById("retry");
  // While disconnected: the count is greyed (it is as of the last connection), the wait
  // counts down, and "Retry now", coming back online or back to the tab retries at once.
  var retryAt = 0;
  var ticker = null;

  function setState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function showCountdown() {
    var left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    setState("closed", "reconnecting in " + left + " s");
  }

  function showMessage(frame) {
    var item = document.createElement("li");
    item.dataset.id = frame.id || "";
    var time = document.createElement("time");
    time.dateTime = frame.time || "";
    time.textContent = frame.time ? new Date(frame.time).toLocaleTimeString() : "";
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = frame.text;
    item.appendChild(time);
    item.appendChild(text);
    list.insertBefore(item, list.firstChild);
    empty.hidden = true;
  }

  // The server lost its message broker (Redis): still connected, but broadcasts wait until it
  // is back, and the count is as of then.
  function showStatus(broadcasts) {
    var delayed = broadcasts === "delayed";
    setState(delayed ? "delayed" : "open", delayed ? "connected, broadcasts delayed" : "connected");
    count.classList.toggle("stale", delayed);
    if (delayed) count.title = "as of when broadcasts were delayed";
    else count.removeAttribute("title");
  }

  var connection = new window.BroadcastConnection(document.body.dataset.receiverPath, {
    message: showMessage,
    count: function (clients) { count.textContent = String(clients); },
    status: showStatus,
    reset: function () {
      notice.hidden = false;
      notice.textContent = "Some messages were missed while you were away: they are no longer kept.";
    },
    connecting: function () {
      clearInterval(ticker);
      ticker = null;
      retry.hidden = true;
      setState("connecting", "connecting…");
    },
    open: function () {
      count.classList.remove("stale");
      count.removeAttribute("title");
      setState("open", "connected");
    },
    closed: function (at, attempt) {
      count.classList.add("stale");
      count.title = "as of the last connection";
      retryAt = at;
      state.dataset.attempt = String(attempt);  // failed connections in a row
      showCountdown();
      ticker = setInterval(showCountdown, 250);
      retry.hidden = false;
    },
  });
  retry.addEventListener("click", function () { connection.retryNow(); });
  connection.connect();
})();
