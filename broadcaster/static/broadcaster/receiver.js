// The receiver page: every message (styled by level, hidden once expired, struck through once
// retracted), the connection state (and transport) and the live count (frames, resuming and the
// SSE fallback: client.js, docs/PROTOCOL.md). Messages are inserted with textContent, never as HTML.
import { BroadcastClient, expired, level as levelOf, levelLabel, whenExpired } from "./client.js";

{
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
  var connection = null;
  // "websocket" or "sse": shown beside the state.
  var transport = "websocket";

  function connectedText(extra) {
    return "connected" + (transport === "sse" ? " (SSE)" : "") + (extra || "");
  }

  function setState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function showCountdown() {
    var left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    setState("closed", "reconnecting in " + left + " s");
  }

  // The "No messages yet" line shows while no message is on view (all hidden as expired).
  function updateEmpty() {
    empty.hidden = list.querySelector("li:not([hidden])") !== null;
  }

  function expire(item) {
    item.dataset.state = "expired";
    item.hidden = true;
    connection.hidden(item.dataset.id);
    updateEmpty();
  }

  function showMessage(frame) {
    var item = document.createElement("li");
    item.dataset.id = frame.id || "";
    var level = levelOf(frame);
    item.dataset.level = level;
    var time = document.createElement("time");
    time.dateTime = frame.time || "";
    time.textContent = frame.time ? new Date(frame.time).toLocaleTimeString() : "";
    item.appendChild(time);
    if (level !== "info") {
      // Said in words, not only in colour.
      var label = document.createElement("strong");
      label.className = "level";
      label.textContent = levelLabel(level);
      item.appendChild(label);
    }
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = frame.text;
    item.appendChild(text);
    if (level === "critical") item.setAttribute("role", "alert");
    list.insertBefore(item, list.firstChild);
    if (expired(frame)) {
      expire(item);  // a resumed message that expired meanwhile: kept in order, not shown
      return;
    }
    updateEmpty();
    whenExpired(frame, function () { expire(item); });
    connection.shown(frame.id);
  }

  function retractMessage(frame) {
    var items = list.querySelectorAll("li");
    for (var i = 0; i < items.length; i++) {
      if (items[i].dataset.id !== frame.id || items[i].dataset.state === "retracted") continue;
      items[i].dataset.state = "retracted";
      var note = document.createElement("em");
      note.className = "retracted";
      note.textContent = " (retracted)";
      items[i].appendChild(note);
      connection.hidden(frame.id);
    }
  }

  // The server lost its message broker (Redis): still connected, but broadcasts wait until it
  // is back, and the count is as of then.
  function showStatus(broadcasts) {
    var delayed = broadcasts === "delayed";
    setState(delayed ? "delayed" : "open", connectedText(delayed ? ", broadcasts delayed" : ""));
    count.classList.toggle("stale", delayed);
    if (delayed) count.title = "as of when broadcasts were delayed";
    else count.removeAttribute("title");
  }

  connection = new BroadcastClient({ path: document.body.dataset.receiverPath,
                                     ssePath: document.body.dataset.ssePath, on: {
    message: showMessage,
    retract: retractMessage,
    count: function (clients) { count.textContent = String(clients); },
    status: showStatus,
    reset: function () {
      notice.hidden = false;
      notice.textContent = "Some messages were missed while you were away: they are no longer kept.";
    },
    connecting: function (over) {
      transport = over;
      state.dataset.transport = over;
      clearInterval(ticker);
      ticker = null;
      retry.hidden = true;
      setState("connecting", "connecting…");
    },
    open: function () {
      count.classList.remove("stale");
      count.removeAttribute("title");
      setState("open", connectedText());
    },
    refused: function (why) {
      clearInterval(ticker);
      ticker = null;
      setState("refused", why);
      retry.hidden = false;
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
  } });
  retry.addEventListener("click", function () { connection.retryNow(); });
  connection.connect();
}
