// The broadcast client for browsers (docs/EMBEDDING.md, "The browser client"; the wire
// contract: docs/PROTOCOL.md). An ES module shared by the receiver page, the banner and host
// frontends:
//
//   import { BroadcastClient } from "/static/broadcaster/client.js";
//   const client = new BroadcastClient({ on: { message: (m) => show(m.text) } });
//   client.connect();   // ... client.close();
//
// It connects over the WebSocket, resumes after every reconnect with ?since=&epoch= (nothing
// lost, nothing twice), backs off between attempts and retries at once when the browser comes
// back online or the tab into view. When the WebSocket cannot open twice in a row (a proxy
// that strips the upgrade) it switches to Server-Sent Events at once, keeping its place, and
// tries the WebSocket again now and then. It reports each message the caller has shown to a
// person (`seen`, once per message per connection, only while the tab is visible). What to
// show is the caller's business.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;
const RESTART = 1012;
// A WebSocket closed without a code from the server (refused upgrade, dropped connection).
const ABNORMAL = 1006;
// BROADCAST_RECEIVERS = "authenticated" and this tab is not signed in (or no longer is):
// retrying as it is cannot help.
const UNAUTHENTICATED = 4401;
const RESTART_JITTER_MS = 1000;
// WebSocket attempts in a row that close before the server's first frame, with no close code
// from it, before the client falls back to SSE.
const FALLBACK_AFTER = 2;
// On SSE after a fallback, the WebSocket is tried again after this long, doubling to the max.
const WEBSOCKET_AGAIN_FIRST_MS = 60000;
const WEBSOCKET_AGAIN_MAX_MS = 600000;
// An attempt that brings no first frame in this long failed (a proxy holding the upgrade, or
// buffering the stream).
const OPEN_TIMEOUT_MS = 10000;
// A tab hidden this long closes its SSE stream until it is shown again (then it resumes): a
// browser gives a site 6 HTTP/1.1 connections, and streams of background tabs would hold
// them all. (A WebSocket takes none of them: it stays.)
const HIDDEN_SSE_MS = 30000;
// setTimeout takes at most 2^31 - 1 ms; a later expiry is waited for in steps.
const LONGEST_TIMER_MS = 0x7fffffff;
// Frame types the SSE stream names its events with (the WebSocket's, plus its own two).
const SSE_EVENTS = ["message", "batch", "retract", "position", "reset", "count", "status", "stream", "close"];

export const WEBSOCKET = "websocket";
export const SSE = "sse";

// A message's level ("info" for one this client does not know), and its label: the words that
// say it besides the colours ("" for info).
const LEVEL_LABELS = { warning: "Warning:", critical: "Critical:" };
export function level(frame) {
  return LEVEL_LABELS[frame.level] ? frame.level : "info";
}
export function levelLabel(name) {
  return LEVEL_LABELS[name] || "";
}

// Whether a message frame has expired (its `expires`, ISO 8601 UTC, has passed).
export function expired(frame) {
  return typeof frame.expires === "string" && Date.parse(frame.expires) <= Date.now();
}

// Call then() when the message expires (never for one that does not).
export function whenExpired(frame, then) {
  if (typeof frame.expires !== "string") return;
  const wait = Date.parse(frame.expires) - Date.now();
  if (!(wait > 0)) {
    then();
    return;
  }
  setTimeout(() => whenExpired(frame, then), Math.min(wait, LONGEST_TIMER_MS));
}

export class BroadcastClient {
  // options (all optional):
  //   path: the WebSocket endpoint ("/ws/broadcast/"); ssePath: the SSE one ("/sse/broadcast/")
  //   host: "host:port" of the broadcast server (this page's); secure: wss/https (as the page)
  //   transport: "auto" (WebSocket, falling back to SSE), "websocket" or "sse"
  //   retryWebSocketAfter: on SSE after a fallback, ms before the WebSocket is tried again
  //     (60000; doubling each time it fails, up to 10 minutes)
  //   closeHiddenStreamAfter: ms a hidden tab keeps its SSE stream (30000; see HIDDEN_SSE_MS)
  //   on: handlers, each optional: message(frame) for each new message, in order;
  //     retract(frame) when message frame.id is taken back; count(clients);
  //     status(broadcasts) ("delayed" | "live"); reset(frame) (messages were missed and are no
  //     longer kept); open(transport) on the server's first frame ("websocket" | "sse");
  //     closed(retryAt, attempt) when the connection is lost (retryAt: Date.now() of the next
  //     try); connecting(transport); refused(why) (only signed-in users may listen).
  constructor(options = {}) {
    const secure = options.secure ?? location.protocol === "https:";
    const host = options.host || location.host;
    this.wsUrl = (secure ? "wss://" : "ws://") + host + (options.path || "/ws/broadcast/");
    this.sseUrl = (secure ? "https://" : "http://") + host + (options.ssePath || "/sse/broadcast/");
    this.handlers = options.on || {};
    this.only = options.transport === WEBSOCKET || options.transport === SSE ? options.transport : null;
    // The stream sends no CORS headers: a server of another origin is reached by WebSocket only.
    if (!this.only && host !== location.host) this.only = WEBSOCKET;
    this.transport = this.only || WEBSOCKET;
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = true;
    // The last message seen, to resume from after a reconnect (docs/PROTOCOL.md, "Resuming").
    this.lastSeq = null;
    this.epoch = null;
    // Attempts in a row that failed before the first frame, on this transport.
    this.failedOpens = 0;
    this.websocketAgainFirstMs = options.retryWebSocketAfter || WEBSOCKET_AGAIN_FIRST_MS;
    this.websocketAgainMs = this.websocketAgainFirstMs;
    this.websocketAgainTimer = null;
    // The open connection (a WebSocket, or an EventSource and its stream token), the ids
    // reported seen on it, and ids shown while the tab was hidden.
    this.socket = null;
    this.stream = "";
    this.probe = null;
    this.openTimer = null;
    this.hiddenTimer = null;
    this.hiddenStreamMs = options.closeHiddenStreamAfter || HIDDEN_SSE_MS;
    this.reported = {};
    this.unseen = [];
    this.justShown = [];
    this.onOnline = () => {
      this.attempt = 0;
      this.retryNow();
    };
    this.onVisible = () => {
      clearTimeout(this.hiddenTimer);
      this.hiddenTimer = null;
      if (document.visibilityState !== "visible") {
        this.hiddenTimer = setTimeout(() => this.rest(), this.hiddenStreamMs);
        return;
      }
      this.retryNow();
      const waiting = this.unseen;
      this.unseen = [];
      waiting.forEach((id) => this.reportNow(id));
    };
  }

  // Connect, and keep connected until close().
  connect() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.open();
  }

  // Disconnect for good (until connect() again).
  close() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.retryTimer);
    clearTimeout(this.websocketAgainTimer);
    clearTimeout(this.hiddenTimer);
    this.retryTimer = this.websocketAgainTimer = this.hiddenTimer = null;
    this.drop();
    if (this.probe) this.probe.close();
    this.probe = null;
  }

  // The caller showed message `id` to the person: report it if it is still shown once the
  // frames that arrived with it are handled (a batch or catch-up of several announcements, or a
  // message and its retraction, leave only what is really on view), now if the tab is visible,
  // else the moment it becomes visible. Once per message per connection; a message shown
  // before this connection opened is not this connection's to report.
  shown(id) {
    if (!id || this.reported[id] || this.justShown.includes(id)) return;
    this.justShown.push(id);
    if (this.justShown.length === 1) setTimeout(() => this.report(), 0);
  }

  // The caller stopped showing message `id` (replaced, dismissed, retracted, expired) before
  // it was reported: it is not reported (a tab that becomes visible later does not see it).
  hidden(id) {
    [this.justShown, this.unseen].forEach((ids) => {
      const at = ids.indexOf(id);
      if (at >= 0) ids.splice(at, 1);
    });
  }

  // A tab hidden for HIDDEN_SSE_MS on SSE: close the stream; showing the tab resumes it.
  rest() {
    this.hiddenTimer = null;
    if (this.stopped || this.transport !== SSE || this.socket === null) return;
    this.drop();
    clearTimeout(this.retryTimer);
    this.retryTimer = -1;  // retryNow() (the tab shown again) reconnects
  }

  // Connect now if waiting to retry (not when connected or connecting).
  retryNow() {
    if (this.retryTimer === null || this.stopped) return;
    clearTimeout(this.retryTimer);
    this.open();
  }

  report() {
    const ids = this.justShown;
    this.justShown = [];
    ids.forEach((id) => this.reportNow(id));
  }

  reportNow(id) {
    if (this.reported[id]) return;
    if (document.visibilityState !== "visible") {
      if (!this.unseen.includes(id)) this.unseen.push(id);
      return;
    }
    if (this.socket === null) return;
    if (this.transport === WEBSOCKET) {
      if (this.socket.readyState !== WebSocket.OPEN) return;
      this.reported[id] = true;
      this.socket.send(JSON.stringify({ type: "seen", id: id }));
    } else if (this.stream) {
      this.reported[id] = true;
      const body = JSON.stringify({ stream: this.stream, seen: [id] });
      fetch(this.sseUrl + "seen/", { method: "POST", body: body, keepalive: true,
                                     headers: { "Content-Type": "application/json" } })
        .catch(() => {});  // a lost report is not retried
    }
  }

  call(name, arg, extra) {
    const handler = this.handlers[name];
    if (handler) handler(arg, extra);
  }

  // A numbered frame: a message, or a retraction of one (alone or in a batch).
  onNumbered(frame) {
    if (typeof frame.seq === "number") {
      if (frame.epoch === this.epoch && this.lastSeq !== null && frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
      this.epoch = frame.epoch;
    }
    if (frame.type === "message") this.call("message", frame);
    else if (frame.type === "retract") this.call("retract", frame);
  }

  // One frame, the same JSON on either transport.
  onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (e) {
      return;
    }
    // A position (after the catch-up) moves the place on as a message would, showing nothing:
    // a client that has had no message still resumes, with nothing lost.
    if (frame.type === "message" || frame.type === "retract" || frame.type === "position") this.onNumbered(frame);
    else if (frame.type === "batch") frame.messages.forEach((m) => this.onNumbered(m));
    else if (frame.type === "count") this.call("count", frame.clients);
    else if (frame.type === "status") this.call("status", frame.broadcasts);
    else if (frame.type === "reset") {
      this.lastSeq = null;
      this.epoch = frame.epoch;
      this.call("reset", frame);
    }
  }

  delayMs() {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, this.attempt));
    return ceiling / 2 + Math.random() * ceiling / 2;
  }

  // The connection closed (`code`: the server's, or ABNORMAL; `taken`: after its first frame).
  lost(code, taken) {
    this.drop();
    if (this.stopped) return;
    if (code === UNAUTHENTICATED) {
      // No timer: it waits for retryNow() (the Retry button, the tab shown again after the
      // person signed in elsewhere).
      this.retryTimer = -1;
      this.call("refused", "Sign in to receive broadcasts.");
      return;
    }
    if (!taken && code === ABNORMAL) this.failedOpens += 1;
    else this.failedOpens = 0;
    if (!this.only && this.failedOpens >= FALLBACK_AFTER) {
      // The WebSocket cannot open here (or SSE cannot: back to the WebSocket), at once.
      this.failedOpens = 0;
      this.switchTo(this.transport === WEBSOCKET ? SSE : WEBSOCKET);
      this.retryTimer = setTimeout(() => this.open(), 0);
      return;
    }
    // 1012: the server is restarting (draining); another one takes the tab at once. The
    // server spreads these closes out; the jitter spreads them a little more.
    const wait = code === RESTART ? Math.random() * RESTART_JITTER_MS : this.delayMs();
    this.attempt = code === RESTART ? 0 : this.attempt + 1;
    this.retryTimer = setTimeout(() => this.open(), wait);
    this.call("closed", Date.now() + wait, this.attempt);
  }

  switchTo(transport) {
    this.transport = transport;
    clearTimeout(this.websocketAgainTimer);
    this.websocketAgainTimer = null;
    if (transport === SSE) {
      this.websocketAgainTimer = setTimeout(() => this.tryWebSocketAgain(), this.websocketAgainMs);
    }
  }

  drop() {
    clearTimeout(this.openTimer);
    this.openTimer = null;
    const socket = this.socket;
    this.socket = null;
    this.stream = "";
    if (socket) {
      socket.onclose = socket.onerror = socket.onmessage = null;
      socket.close();
    }
  }

  resumeQuery() {
    if (this.lastSeq === null) return "";
    return "?since=" + this.lastSeq + (this.epoch ? "&epoch=" + encodeURIComponent(this.epoch) : "");
  }

  open() {
    this.retryTimer = null;
    this.reported = {};
    this.unseen = [];
    this.call("connecting", this.transport);
    if (this.transport === WEBSOCKET) this.openWebSocket();
    else this.openEventSource();
  }

  // The server's first frame, not the handshake, says it took this tab (a full server accepts,
  // then closes with 1013): only now does the backoff start over.
  taken() {
    clearTimeout(this.openTimer);
    this.openTimer = null;
    this.attempt = 0;
    this.failedOpens = 0;
    if (this.transport === SSE && document.visibilityState !== "visible" && this.hiddenTimer === null) {
      this.hiddenTimer = setTimeout(() => this.rest(), this.hiddenStreamMs);
    }
    this.call("open", this.transport);
  }

  openWebSocket() {
    const ws = new WebSocket(this.wsUrl + this.resumeQuery());
    this.socket = ws;
    let taken = false;
    this.failIfSilent(ws);
    ws.onmessage = (event) => {
      if (!taken) {
        taken = true;
        this.taken();
      }
      this.onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (this.socket === ws) this.lost(event.code, taken);
    };
  }

  openEventSource() {
    const es = new EventSource(this.sseUrl + this.resumeQuery());
    this.socket = es;
    let taken = false;
    this.failIfSilent(es);
    const onEvent = (event) => {
      if (this.socket !== es) return;
      if (event.type === "stream") {
        this.stream = JSON.parse(event.data).token;
        return;
      }
      if (event.type === "close") {
        // The server ended the stream; the code says how to come back (as a WebSocket's would).
        this.lost(JSON.parse(event.data).code, taken);
        return;
      }
      if (!taken) {
        taken = true;
        this.taken();
      }
      this.onFrame(event.data);
    };
    SSE_EVENTS.forEach((name) => es.addEventListener(name, onEvent));
    // A stream that fails or drops: this client reconnects itself (resuming), not the EventSource.
    es.onerror = () => {
      if (this.socket === es) this.lost(ABNORMAL, taken);
    };
  }

  // No first frame within OPEN_TIMEOUT_MS: a failed open (taken() clears the timer).
  failIfSilent(socket) {
    clearTimeout(this.openTimer);
    this.openTimer = setTimeout(() => {
      if (this.socket === socket) this.lost(ABNORMAL, false);
    }, OPEN_TIMEOUT_MS);
  }

  // On SSE after a fallback: open a WebSocket beside the stream; if the server's first frame
  // comes on it, it takes over (resuming where the stream was: frames both carried are shown
  // once), else the stream stays and the next try waits twice as long.
  tryWebSocketAgain() {
    this.websocketAgainTimer = null;
    if (this.stopped || this.transport !== SSE) return;
    const ws = new WebSocket(this.wsUrl + this.resumeQuery());
    this.probe = ws;
    let taken = false;
    ws.onmessage = (event) => {
      if (taken && this.socket !== ws) return;  // replaced since (closed by drop())
      if (!taken) {
        if (this.probe !== ws) return;
        taken = true;
        this.probe = null;
        // It takes over: from the stream, or from a reconnect the stream was waiting for.
        clearTimeout(this.retryTimer);
        this.retryTimer = null;
        this.drop();
        this.websocketAgainMs = this.websocketAgainFirstMs;
        this.switchTo(WEBSOCKET);
        this.socket = ws;
        this.reported = {};
        this.taken();
      }
      this.onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (this.socket === ws) {
        this.lost(event.code, true);
        return;
      }
      if (this.probe !== ws) return;
      this.probe = null;
      this.websocketAgainMs = Math.min(this.websocketAgainMs * 2, WEBSOCKET_AGAIN_MAX_MS);
      if (this.transport === SSE && !this.stopped) {
        this.websocketAgainTimer = setTimeout(() => this.tryWebSocketAgain(), this.websocketAgainMs);
      }
    };
  }
}

// Connect at once: `connect(options)` is `new BroadcastClient(options)` then `.connect()`.
export function connect(options) {
  const client = new BroadcastClient(options);
  client.connect();
  return client;
}
