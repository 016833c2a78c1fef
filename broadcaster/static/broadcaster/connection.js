// The receiver protocol in the browser (docs/PROTOCOL.md), shared by the receiver page and the
// announcement banner: connect, resume after a reconnect with ?since=&epoch=, drop messages
// seen already, back off between attempts, and retry at once when the browser comes back
// online or the tab comes back into view. What to show is the caller's business.
(function () {
  "use strict";
  var BACKOFF_FIRST_MS = 500;
  var BACKOFF_MAX_MS = 30000;
  var RESTART = 1012;
  var RESTART_JITTER_MS = 1000;

  // handlers (all optional): message(frame) for each new numbered message, in order;
  // count(clients); status(broadcasts) ("delayed" | "live"); reset(frame) (messages were
  // missed and are no longer kept); open() on the server's first frame; closed(retryAt, attempt)
  // when the connection is lost (retryAt: Date.now() of the next try); connecting().
  function BroadcastConnection(path, handlers) {
    this.url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
    this.handlers = handlers;
    this.attempt = 0;
    this.retryTimer = null;
    // The last message seen, to resume from after a reconnect (docs/PROTOCOL.md, "Resuming").
    this.lastSeq = null;
    this.epoch = null;
    var self = this;
    window.addEventListener("online", function () { self.attempt = 0; self.retryNow(); });
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") self.retryNow();
    });
  }

  BroadcastConnection.prototype.call = function (name, arg, extra) {
    var handler = this.handlers[name];
    if (handler) handler(arg, extra);
  };

  BroadcastConnection.prototype.onMessage = function (frame) {
    if (typeof frame.seq === "number") {
      if (frame.epoch === this.epoch && this.lastSeq !== null && frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
      this.epoch = frame.epoch;
    }
    this.call("message", frame);
  };

  BroadcastConnection.prototype.onFrame = function (data) {
    var frame;
    try { frame = JSON.parse(data); } catch (e) { return; }
    if (frame.type === "message") this.onMessage(frame);
    else if (frame.type === "batch") frame.messages.forEach(this.onMessage, this);
    else if (frame.type === "count") this.call("count", frame.clients);
    else if (frame.type === "status") this.call("status", frame.broadcasts);
    else if (frame.type === "reset") {
      this.lastSeq = null;
      this.epoch = frame.epoch;
      this.call("reset", frame);
    }
  };

  BroadcastConnection.prototype.delayMs = function () {
    var ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, this.attempt));
    return ceiling / 2 + Math.random() * ceiling / 2;
  };

  BroadcastConnection.prototype.scheduleRetry = function (code) {
    // 1012: the server is restarting (draining); another one takes the tab at once. The
    // server spreads these closes out; the jitter spreads them a little more.
    var wait = code === RESTART ? Math.random() * RESTART_JITTER_MS : this.delayMs();
    this.attempt = code === RESTART ? 0 : this.attempt + 1;
    this.retryTimer = setTimeout(this.connect.bind(this), wait);
    this.call("closed", Date.now() + wait, this.attempt);
  };

  // Connect now if waiting to retry (not when connected or connecting).
  BroadcastConnection.prototype.retryNow = function () {
    if (this.retryTimer === null) return;
    clearTimeout(this.retryTimer);
    this.connect();
  };

  BroadcastConnection.prototype.connect = function () {
    var self = this;
    this.retryTimer = null;
    this.call("connecting");
    var resume = this.lastSeq === null ? "" :
      "?since=" + this.lastSeq + (this.epoch ? "&epoch=" + encodeURIComponent(this.epoch) : "");
    var ws = new WebSocket(this.url + resume);
    var taken = false;
    ws.onmessage = function (event) {
      if (!taken) {
        // The server's first frame, not the handshake, says it took this tab (a full server
        // accepts, then closes with 1013): only now does the backoff start over.
        taken = true;
        self.attempt = 0;
        self.call("open");
      }
      self.onFrame(event.data);
    };
    ws.onclose = function (event) { self.scheduleRetry(event.code); };
  };

  window.BroadcastConnection = BroadcastConnection;
})();
