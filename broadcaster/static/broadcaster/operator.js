// The operator page: length counter, send confirmation, and the count and recent list kept
// fresh by polling the staff-only status URL. Text is inserted with textContent, never as HTML.
(function () {
  "use strict";
  var root = document.getElementById("operator");
  var statusUrl = root.dataset.statusUrl;
  var refreshMs = Number(root.dataset.refreshMs);
  var maxLength = Number(root.dataset.maxLength);
  var confirmAbove = Number(root.dataset.confirmAbove);
  // Where Retract buttons post (empty for staff who may not send: no buttons).
  var retractUrl = root.dataset.retractUrl;
  var count = document.getElementById("count");
  var redis = document.getElementById("redis");
  var tbody = document.querySelector("#recent tbody");
  var form = document.getElementById("send-form");
  var clients = count.textContent.trim() === "–" ? null : Number(count.textContent);
  // The send form's audience, and how many connected clients it reaches (null: not known yet).
  var audienceInput = form ? form.elements.audience : null;
  var audienceCount = document.getElementById("audience-count");
  var reached = null;

  // The server counts characters (code points), not UTF-16 units as textarea.maxLength would.
  function length(text) { return Array.from(text).length; }

  if (form) {
    var textarea = form.elements.text;
    var counter = document.getElementById("length");
    var send = document.getElementById("send");
    var updateLength = function () {
      var n = length(textarea.value);
      counter.textContent = n + " / " + maxLength;
      counter.classList.toggle("over", n > maxLength);
      send.disabled = n > maxLength;
    };
    textarea.addEventListener("input", updateLength);
    updateLength();
    var sending = false;
    form.addEventListener("submit", function (event) {
      // One click, one broadcast (the server also refuses a second post of the same form).
      if (sending) { event.preventDefault(); return; }
      var confirmed = event.submitter && event.submitter.name === "confirmed";
      var targeted = audienceInput && audienceInput.value.trim() !== "";
      var n = targeted ? reached : clients;
      if (!confirmed && n !== null && n > confirmAbove) {
        if (!window.confirm("Send this message to " + n + (n === 1 ? " client?" : " clients?"))) {
          event.preventDefault();
          return;
        }
        form.elements.confirmed.value = "yes";
      }
      sending = true;
      send.value = "Sending…";
    });
    // Back to this page from the browser's history: the form is usable again (a new send
    // of the same form is still refused by the server).
    window.addEventListener("pageshow", function () { sending = false; send.value = "Send"; });
  }

  // Times in the browser's zone, as on the receiver page.
  function localTime(iso) { return new Date(iso).toLocaleString(); }
  document.querySelectorAll("#recent time, #recent .expires time").forEach(function (t) {
    t.textContent = localTime(t.dateTime);
  });

  function cell(row, name, text) {
    var td = document.createElement("td");
    td.className = name;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function number(n) { return n === null || n === undefined ? "–" : String(n); }

  function retractForm(id) {
    var form = document.createElement("form");
    form.method = "post";
    form.action = retractUrl;
    form.className = "retract-form";
    [["csrfmiddlewaretoken", csrfToken()], ["id", id], ["confirmed", ""]].forEach(function (field) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = field[0];
      input.value = field[1];
      form.appendChild(input);
    });
    var button = document.createElement("button");
    button.type = "submit";
    button.className = "retract";
    button.textContent = "Retract";
    form.appendChild(button);
    return form;
  }

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function showRecent(records) {
    var rows = records.map(function (r) {
      var row = document.createElement("tr");
      row.className = r.status;
      row.dataset.id = r.id || "";
      row.dataset.level = r.level;
      if (r.retracted) row.dataset.retracted = r.retracted;
      var time = document.createElement("time");
      time.dateTime = r.time;
      time.textContent = localTime(r.time);
      cell(row, "time", "").appendChild(time);
      cell(row, "sender", r.sender);
      cell(row, "level", r.level);
      cell(row, "audience", r.audience.join(", "));
      cell(row, "clients", number(r.clients));
      cell(row, "delivered", number(r.delivered));
      cell(row, "seen", number(r.seen));
      var status = r.retracted ? "retracted by " + r.retracted_by : (r.expired ? "expired" : r.status);
      cell(row, "status", status).title = r.error;
      var text = cell(row, "text", r.text);
      if (r.expires) {
        var expires = document.createElement("small");
        expires.className = "expires";
        expires.textContent = " (expires " + localTime(r.expires) + ")";
        text.appendChild(expires);
      }
      var actions = cell(row, "actions", "");
      if (retractUrl && (r.status === "sent" || r.status === "pending") && !r.retracted && r.id) actions.appendChild(retractForm(r.id));
      return row;
    });
    if (rows.length === 0) {
      var empty = document.createElement("tr");
      empty.className = "empty";
      cell(empty, "", "Nothing sent yet.").colSpan = 9;
      rows.push(empty);
    }
    tbody.replaceChildren.apply(tbody, rows);
  }

  // Retract asks first; the server asks again on its own page if this script did not run.
  tbody.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.classList.contains("retract-form")) return;
    var row = form.closest("tr");
    var text = row.querySelector("td.text").firstChild.textContent;
    if (!window.confirm("Retract this broadcast from every client?\n\n" + text.slice(0, 200))) {
      event.preventDefault();
      return;
    }
    form.elements.confirmed.value = "yes";
  });

  function typedAudience() { return audienceInput ? audienceInput.value.trim() : ""; }

  // `askedFor`: the audience typed when the answer was asked for. A late answer for an
  // earlier value (the field changed since) says nothing of what is typed now: ignored.
  function showReached(status, askedFor) {
    if (!audienceCount || askedFor !== typedAudience()) return;
    if (!("audience_clients" in status)) {
      reached = null;
      audienceCount.textContent = "";
      return;
    }
    reached = status.audience_clients;
    audienceCount.textContent = status.audience_error ? status.audience_error
      : (reached === null ? "" : "reaches " + reached + (reached === 1 ? " client now" : " clients now"));
  }

  function statusFor(typed) {
    return typed ? statusUrl + "?audience=" + encodeURIComponent(typed) : statusUrl;
  }

  if (audienceInput) {
    var typing = null;
    audienceInput.addEventListener("input", function () {
      clearTimeout(typing);
      typing = setTimeout(function () {
        var typed = typedAudience();
        fetch(statusFor(typed), { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then(function (response) { return response.ok ? response.json() : null; })
          .then(function (status) { if (status) showReached(status, typed); })
          .catch(function () { /* the next refresh says what is wrong */ });
      }, 300);
    });
  }

  function refresh() {
    var typed = typedAudience();
    fetch(statusFor(typed), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        // Logged out or no longer staff: reloading leads to the login page.
        if (response.status === 403) { location.reload(); return null; }
        return response.json();
      })
      .then(function (status) {
        if (status === null) return;
        clients = status.clients;
        count.textContent = clients === null ? "–" : String(clients);
        redis.hidden = status.redis === "ok";
        redis.textContent = status.redis === "ok" ? "" : status.redis;
        showRecent(status.recent);
        showReached(status, typed);
      })
      .catch(function () {
        redis.hidden = false;
        redis.textContent = "The server did not answer; retrying.";
      })
      .finally(function () { setTimeout(refresh, refreshMs); });
  }
  setTimeout(refresh, refreshMs);
})();
