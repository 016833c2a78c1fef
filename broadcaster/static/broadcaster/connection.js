// The receiver protocol in the browser (docs/PROTOCOL.md), shared by the receiver page and the
// announcement banner: connect, resume after a reconnect with ?since=&epoch=, drop messages
// seen already, back off between attempts, and retry at once when the browser comes back
// online or the tab comes back into view, and report each message the caller has shown to a
// person (`seen`, once per message per connection, only while the tab is visible). What to show
// is the caller's business.
(function () {
  "use strict";
  var BACKOFF_FIRST_MS = 500;
  var BACKOFF_MAX_MS = 30000;
  var RESTART = 1012;
  // BROADCAST_RECEIVERS = "authenticated" and this tab is not signed in (or no longer is):
  // retrying as it is cannot help.
  var UNAUTHENTICATED = 4401;
  var RESTART_JITTER_MS = 1000;
  // setTimeout takes at most 2^31 - 1 ms; a later expiry is waited for in steps.
  var LONGEST_TIMER_MS = 0x7fffffff;

  // handlers (all optional): message(frame) for each new numbered message, in order;
  // retract(frame) when message frame.id is taken back; count(clients); status(broadcasts)
  // ("delayed" | "live"); reset(frame) (messages were missed and are no longer kept); open() on
  // the server's first frame; closed(retryAt, attempt) when the connection is lost (retryAt:
  // Date.now() of the next try); connecting().
  function BroadcastConnection(path, handlers) {
    this.url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
    this.handlers = handlers;
    this.attempt = 0;
    this.retryTimer = null;
    // The last message seen, to resume from after a reconnect (docs/PROTOCOL.md, "Resuming").
    this.lastSeq = null;
    this.epoch = null;
    // The open socket, ids reported seen on it, and ids shown while the tab was hidden.
    this.ws = null;
    this.reported = {};
    this.unseen = [];
    this.justShown = [];
    var self = this;
    window.addEventListener("online", function () { self.attempt = 0; self.retryNow(); });
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState !== "visible") return;
      self.retryNow();
      var waiting = self.unseen;
      self.unseen = [];
      waiting.forEach(self.reportNow, self);
    });
  }

  // A message's level ("info" for one this client does not know), and its label: the words
  // that say it besides the colours ("" for info).
  var LEVEL_LABELS = { warning: "Warning:", critical: "Critical:" };
  BroadcastConnection.level = function (frame) {
    return LEVEL_LABELS[frame.level] ? frame.level : "info";
  };
  BroadcastConnection.levelLabel = function (level) { return LEVEL_LABELS[level] || ""; };

  // Whether a message frame has expired (its `expires`, ISO 8601 UTC, has passed).
  BroadcastConnection.expired = function (frame) {
    return typeof frame.expires === "string" && Date.parse(frame.expires) <= Date.now();
  };

  // Call then() when the message expires (never for one that does not).
  BroadcastConnection.whenExpired = function (frame, then) {
    if (typeof frame.expires !== "string") return;
    var wait = Date.parse(frame.expires) - Date.now();
    if (!(wait > 0)) { then(); return; }
    var step = Math.min(wait, LONGEST_TIMER_MS);
    setTimeout(function () { BroadcastConnection.whenExpired(frame, then); }, step);
  };

  // The caller showed message `id` to the person: report it if it is still shown once the
  // frames that arrived with it are handled (a batch or catch-up of several announcements, or a
  // message and its retraction, leave only what is really on view), now if the tab is visible,
  // else the moment it becomes visible. Once per message per connection; a message shown
  // before this connection opened is not this connection's to report.
  BroadcastConnection.prototype.shown = function (id) {
    if (!id || this.reported[id] || this.justShown.indexOf(id) >= 0) return;
    this.justShown.push(id);
    if (this.justShown.length === 1) setTimeout(this.report.bind(this), 0);
  };

  BroadcastConnection.prototype.report = function () {
    var ids = this.justShown;
    this.justShown = [];
    ids.forEach(this.reportNow, this);
  };

  BroadcastConnection.prototype.reportNow = function (id) {
    if (this.reported[id]) return;
    if (document.visibilityState !== "visible") {
      if (this.unseen.indexOf(id) < 0) this.unseen.push(id);
      return;
    }
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) return;
    this.reported[id] = true;
    this.ws.send(JSON.stringify({ type: "seen", id: id }));
  };

  // The caller stopped showing message `id` (replaced, dismissed, retracted, expired) before
  // it was reported: it is not reported (a tab that becomes visible later does not see it).
  BroadcastConnection.prototype.hidden = function (id) {
    [this.justShown, this.unseen].forEach(function (ids) {
      var at = ids.indexOf(id);
      if (at >= 0) ids.splice(at, 1);
    });
  };

  BroadcastConnection.prototype.call = function (name, arg, extra) {
    var handler = this.handlers[name];
    if (handler) handler(arg, extra);
  };

  // A numbered frame: a message, or a retraction of one (alone or in a batch).
  BroadcastConnection.prototype.onNumbered = function (frame) {
    if (typeof frame.seq === "number") {
      if (frame.epoch === this.epoch && this.lastSeq !== null && frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
      this.epoch = frame.epoch;
    }
    if (frame.type === "message") this.call("message", frame);
    else if (frame.type === "retract") this.call("retract", frame);
  };

  BroadcastConnection.prototype.onFrame = function (data) {
    var frame;
    try { frame = JSON.parse(data); } catch (e) { return; }
    if (frame.type === "message" || frame.type === "retract") this.onNumbered(frame);
    else if (frame.type === "batch") frame.messages.forEach(this.onNumbered, this);
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
    if (code === UNAUTHENTICATED) {
      // No timer: it waits for retryNow() (the Retry button, the tab shown again after the
      // person signed in elsewhere).
      this.retryTimer = -1;
      this.call("refused", "Sign in to receive broadcasts.");
      return;
    }
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
    this.ws = ws;
    this.reported = {};
    this.unseen = [];
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
    ws.onclose = function (event) {
      if (self.ws === ws) self.ws = null;
      self.scheduleRetry(event.code);
    };
  };

  window.BroadcastConnection = BroadcastConnection;
})();
