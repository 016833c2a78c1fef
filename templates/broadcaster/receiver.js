// The browser receiver: see docs/PROTOCOL.md for the frames.
// Messages are inserted with textContent, never as HTML.
(function () {
  "use strict";
  var BACKOFF_FIRST_MS = 500;
  var BACKOFF_MAX_MS = 30000;
  var RESTART = 1012;
  var RESTART_JITTER_MS = 1000;
  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/broadcast/";
  var list = document.getElementById("messages");
  var empty = document.getElementById("empty");
  var count = document.getElementById("count");
  var state = document.getElementById("state");
  var notice = document.getElementById("notice");
  var retry = document.getElementById("retry");
  var attempt = 0;
  var retryTimer = null;
  // The last message seen, to resume from after a reconnect (docs/PROTOCOL.md, "Resuming").
  var lastSeq = null;
  var epoch = null;

  function setState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function showMessage(frame) {
    if (typeof frame.seq === "number") {
      if (frame.epoch === epoch && lastSeq !== null && frame.seq <= lastSeq) return;  // seen already
      lastSeq = frame.seq;
      epoch = frame.epoch;
    }
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

  function onFrame(event) {
    var frame;
    try { frame = JSON.parse(event.data); } catch (e) { return; }
    if (frame.type === "message") showMessage(frame);
    else if (frame.type === "batch") frame.messages.forEach(showMessage);
    else if (frame.type === "count") count.textContent = String(frame.clients);
    else if (frame.type === "status") showStatus(frame.broadcasts);
    else if (frame.type === "reset") {
      lastSeq = null;
      epoch = frame.epoch;
      notice.hidden = false;
      notice.textContent = "Some messages were missed while you were away: they are no longer kept.";
    }
  }

  function delayMs() {
    var ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, attempt));
    return ceiling / 2 + Math.random() * ceiling / 2;
  }

  // While disconnected: the count is greyed (it is as of the last connection), the wait
  // counts down, and "Retry now", coming back online or back to the tab retries at once.
  var retryAt = 0;
  var ticker = null;

  function showCountdown() {
    var left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    setState("closed", "reconnecting in " + left + " s");
  }

  function scheduleRetry(code) {
    // 1012: the server is restarting (draining); another one takes the tab at once. The
    // server spreads these closes out; the jitter spreads them a little more.
    var wait = code === RESTART ? Math.random() * RESTART_JITTER_MS : delayMs();
    attempt = code === RESTART ? 0 : attempt + 1;
    retryAt = Date.now() + wait;
    state.dataset.attempt = String(attempt);  // failed connections in a row
    showCountdown();
    retryTimer = setTimeout(connect, wait);
    ticker = setInterval(showCountdown, 250);
    retry.hidden = false;
  }

  function retryNow() {
    if (retryTimer === null) return;  // connected, or connecting now
    clearTimeout(retryTimer);
    connect();
  }

  function connect() {
    retryTimer = null;
    clearInterval(ticker);
    ticker = null;
    retry.hidden = true;
    setState("connecting", "connecting…");
    var resume = lastSeq === null ? "" :
      "?since=" + lastSeq + (epoch ? "&epoch=" + encodeURIComponent(epoch) : "");
    var ws = new WebSocket(url + resume);
    var taken = false;
    ws.onmessage = function (event) {
      if (!taken) {
        // The server's first frame, not the handshake, says it took this tab (a full server
        // accepts, then closes with 1013): only now does the backoff start over.
        taken = true;
        attempt = 0;
        count.classList.remove("stale");
        count.removeAttribute("title");
        setState("open", "connected");
      }
      onFrame(event);
    };
    ws.onclose = function (event) {
      count.classList.add("stale");
      count.title = "as of the last connection";
      scheduleRetry(event.code);
    };
  }

  retry.addEventListener("click", retryNow);
  // Coming back online, or back to the tab, should not wait out a long backoff.
  window.addEventListener("online", function () { attempt = 0; retryNow(); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") retryNow();
  });
  connect();
})();
