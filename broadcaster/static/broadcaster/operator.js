// The operator page: length counter, send confirmation, and the count and recent list kept
// fresh by polling the staff-only status URL. Text is inserted with textContent, never as HTML.
(function () {
  "use strict";
  var root = document.getElementById("operator");
  var statusUrl = root.dataset.statusUrl;
  var refreshMs = Number(root.dataset.refreshMs);
  var maxLength = Number(root.dataset.maxLength);
  var confirmAbove = Number(root.dataset.confirmAbove);
  var count = document.getElementById("count");
  var redis = document.getElementById("redis");
  var tbody = document.querySelector("#recent tbody");
  var form = document.getElementById("send-form");
  var clients = count.textContent.trim() === "–" ? null : Number(count.textContent);

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
      if (!confirmed && clients !== null && clients > confirmAbove) {
        if (!window.confirm("Send this message to " + clients + (clients === 1 ? " client?" : " clients?"))) {
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
  document.querySelectorAll("#recent time").forEach(function (t) {
    t.textContent = localTime(t.dateTime);
  });

  function cell(row, name, text) {
    var td = document.createElement("td");
    td.className = name;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function showRecent(records) {
    var rows = records.map(function (r) {
      var row = document.createElement("tr");
      row.className = r.status;
      var time = document.createElement("time");
      time.dateTime = r.time;
      time.textContent = localTime(r.time);
      cell(row, "time", "").appendChild(time);
      cell(row, "sender", r.sender);
      cell(row, "clients", r.clients === null ? "–" : String(r.clients));
      cell(row, "status", r.status).title = r.error;
      cell(row, "text", r.text);
      return row;
    });
    if (rows.length === 0) {
      var empty = document.createElement("tr");
      empty.className = "empty";
      cell(empty, "", "Nothing sent yet.").colSpan = 5;
      rows.push(empty);
    }
    tbody.replaceChildren.apply(tbody, rows);
  }

  function refresh() {
    fetch(statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
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
      })
      .catch(function () {
        redis.hidden = false;
        redis.textContent = "The server did not answer; retrying.";
      })
      .finally(function () { setTimeout(refresh, refreshMs); });
  }
  setTimeout(refresh, refreshMs);
})();
