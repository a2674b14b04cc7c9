// The operator page: polls <admin>/state.json every second and renders it. No dependencies.
"use strict";
(function () {
  const admin = document.body.dataset.admin;
  const seen = new Map(); // upload id -> {offset, at}: the rate is the change between two polls
  const $ = (id) => document.getElementById(id);

  function bytes(n) {
    if (n === null || n === undefined || n < 0) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(seconds) {
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " d";
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function bar(row, id, offset, length) {
    const td = document.createElement("td");
    const pct = length ? Math.min(100, (100 * offset) / length) : 0;
    const outer = document.createElement("div");
    outer.className = "bar";
    outer.setAttribute("role", "progressbar");
    outer.setAttribute("aria-valuemin", "0");
    outer.setAttribute("aria-valuemax", "100");
    outer.setAttribute("aria-valuenow", pct.toFixed(1));
    outer.dataset.upload = id;
    const inner = document.createElement("div");
    inner.style.width = pct.toFixed(1) + "%";
    outer.appendChild(inner);
    const label = document.createElement("span");
    label.className = "pct";
    label.textContent = length ? pct.toFixed(0) + " %" : bytes(offset);
    td.append(outer, label);
    row.appendChild(td);
  }

  function fill(table, rows, render) {
    const body = $(table).querySelector("tbody");
    body.replaceChildren();
    for (const item of rows || []) {
      const row = document.createElement("tr");
      row.dataset.upload = item.id;
      render(row, item);
      body.appendChild(row);
    }
    $(table + "-empty").hidden = Boolean(rows && rows.length);
  }

  function label(item) {
    return item.name ? item.name + " · " + item.id.slice(0, 8) : item.id;
  }

  async function remove(id, button) {
    button.disabled = true;
    const answer = await fetch(admin + "/uploads/" + id, { method: "DELETE", credentials: "same-origin" });
    if (!answer.ok) {
      button.disabled = false;
      button.textContent = "failed (" + answer.status + ")";
    }
    refresh();
  }

  function render(state) {
    const now = Date.now();
    const ready = state.ready;
    $("status").textContent = ready ? ready.status + (ready.failed.length ? ": " + ready.failed.join(", ") : "") : "?";
    $("status").className = "status " + (ready && ready.status === "ready" ? "ok" : "bad");
    $("disk").textContent = state.disk
      ? "disk " + bytes(state.disk.free) + " free of " + bytes(state.disk.size)
      : "disk ?";
    $("hooks").textContent = state.hooks
      ? "hooks " + state.hooks.pending + " pending, " + state.hooks.dead + " dead"
      : "hooks ?";
    fill("in-progress", state.in_progress, (row, item) => {
      const before = seen.get(item.id);
      let rate = item.body_started_s_ago > 0 ? item.body_bytes / item.body_started_s_ago : 0;
      if (before && now > before.at) rate = ((item.offset - before.offset) * 1000) / (now - before.at);
      seen.set(item.id, { offset: item.offset, at: now });
      cell(row, label(item), "id");
      bar(row, item.id, item.offset, item.length);
      cell(row, bytes(item.offset) + " / " + bytes(item.length));
      cell(row, bytes(Math.max(rate, 0)) + "/s", "rate");
      cell(row, item.client);
      cell(row, duration((now - Date.parse(item.created_at)) / 1000));
    });
    fill("recent", state.recent, (row, item) => {
      cell(row, item.id, "id");
      cell(row, item.outcome, item.outcome === "finished" ? "outcome-finished" : "outcome-failed");
      cell(row, bytes(item.length));
      cell(row, bytes(item.offset));
      cell(row, item.client);
      cell(row, new Date(item.at).toLocaleTimeString());
    });
    if (state.unfinished === null) {
      $("unfinished-empty").hidden = false;
      $("unfinished-empty").textContent = "The database does not answer.";
      return;
    }
    fill("unfinished", state.unfinished, (row, item) => {
      cell(row, label(item), "id");
      bar(row, item.id, item.offset, item.length);
      cell(row, bytes(item.offset) + " / " + bytes(item.length));
      cell(row, duration(item.idle_s));
      cell(row, item.expired ? "expired" : item.held ? "in progress elsewhere" : "idle");
      const td = document.createElement("td");
      const button = document.createElement("button");
      button.textContent = "delete";
      button.className = "delete";
      button.addEventListener("click", () => remove(item.id, button));
      td.appendChild(button);
      row.appendChild(td);
    });
  }

  async function refresh() {
    try {
      const answer = await fetch(admin + "/state.json", { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) { window.location.reload(); return; }
      render(await answer.json());
    } catch (error) {
      $("status").textContent = "server unreachable";
      $("status").className = "status bad";
    }
  }

  refresh();
  setInterval(refresh, 1000);
})();
