// The announcement banner ({% broadcast_banner %}): the current announcement and each new one,
// on any page, styled by level; it goes away when the announcement expires or is retracted.
// It lives in a shadow root with its own stylesheet, so the host page's styles do not reach it
// and its styles do not reach the page. Text is inserted with textContent only.
// Frames, resuming and the SSE fallback: client.js.
import { BroadcastClient, expired, level as levelOf, levelLabel, whenExpired } from "./client.js";

{
  var DISMISSED_KEY = "broadcaster.dismissed";

  function start(host) {
    var root = host.attachShadow({ mode: "open" });
    var style = document.createElement("link");
    style.rel = "stylesheet";
    style.href = host.dataset.stylesheet;
    var box = document.createElement("div");
    box.className = "banner";
    // The live region is the text alone: screen readers announce the announcement, not the
    // Dismiss button with it.
    var text = document.createElement("p");
    text.className = "text";
    text.setAttribute("role", "status");
    text.setAttribute("aria-live", "polite");
    text.setAttribute("aria-label", "Announcement");
    var label = document.createElement("strong");
    label.className = "level";
    var words = document.createElement("span");
    var time = document.createElement("time");
    time.className = "time";
    var dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.className = "dismiss";
    dismiss.setAttribute("aria-label", "Dismiss announcement");
    dismiss.textContent = "\u00d7";
    box.appendChild(text);
    box.appendChild(time);
    box.appendChild(dismiss);
    root.appendChild(style);
    root.appendChild(box);
    var shownId = null;
    var connection = null;

    // Shown or hidden with an inline style as well as `hidden` (set through the CSSOM, which a
    // Content-Security-Policy allows): a page rule such as `div { display: block }` would
    // otherwise beat `:host([hidden])` and show an empty or dismissed banner.
    function setVisible(visible) {
      host.hidden = !visible;
      host.style.display = visible ? "" : "none";
    }

    function hide() {
      setVisible(false);
      if (shownId) connection.hidden(shownId);
      try { sessionStorage.setItem(DISMISSED_KEY, shownId || ""); } catch (e) { /* storage off */ }
    }

    // The announcement on show is no longer true (expired, retracted): no banner until a new one.
    function withdraw(id) {
      if (id !== shownId) return;
      connection.hidden(id);
      shownId = null;
      host.dataset.id = "";
      text.textContent = "";
      setVisible(false);
    }

    function show(frame) {
      if (expired(frame)) {
        withdraw(shownId);  // the newest expired while this tab was away: nothing is current
        return;
      }
      var dismissed = null;
      try { dismissed = sessionStorage.getItem(DISMISSED_KEY); } catch (e) { /* storage off */ }
      // A newer one replaces it before the person could see it (one batch, one catch-up).
      if (shownId && shownId !== frame.id) connection.hidden(shownId);
      shownId = frame.id || null;
      time.dateTime = frame.time || "";
      time.textContent = frame.time ? new Date(frame.time).toLocaleTimeString() : "";
      host.dataset.id = frame.id || "";
      var level = levelOf(frame);
      box.dataset.level = level;
      var levelWord = levelLabel(level);
      // Critical interrupts a screen reader; the others wait for a pause.
      text.setAttribute("aria-live", level === "critical" ? "assertive" : "polite");
      // One the person dismissed stays dismissed across page loads of this tab.
      var visible = !(frame.id && frame.id === dismissed);
      if (visible && host.hidden) {
        // A live region's change is announced only while it is displayed: show it, then fill it.
        fill("", "");
        setVisible(true);
        setTimeout(function () {
          if (shownId === (frame.id || null)) fill(levelWord, frame.text);
        }, 50);
      } else {
        fill(levelWord, frame.text);
        setVisible(visible);
      }
      whenExpired(frame, function () { withdraw(frame.id); });
      if (visible) connection.shown(frame.id);
    }

    // The live region holds the level's word and the text, so both are announced.
    function fill(levelWord, message) {
      text.textContent = "";
      if (levelWord) {
        label.textContent = levelWord + " ";
        text.appendChild(label);
      }
      words.textContent = message;
      text.appendChild(words);
    }

    setVisible(false);

    dismiss.addEventListener("click", hide);
    box.addEventListener("keydown", function (event) {
      if (event.key === "Escape") hide();
    });
    connection = new BroadcastClient({ path: host.dataset.receiverPath, ssePath: host.dataset.ssePath, on: {
      message: show,
      retract: function (frame) { withdraw(frame.id); },
      // Only signed-in users may listen here: say so, in place of an announcement.
      refused: function (why) {
        host.dataset.state = "refused";
        fill("", why);
        setVisible(true);
      },
      open: function (transport) { host.dataset.transport = transport; },
    } });
    connection.connect();
  }

  var hosts = document.querySelectorAll(".broadcast-banner[data-receiver-path]");
  for (var i = 0; i < hosts.length; i++) {
    if (!hosts[i].shadowRoot) start(hosts[i]);
  }
}
