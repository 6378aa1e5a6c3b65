// The Team page: edit a number in place (click, type, Enter), and keep the viewer's
// credits badge live from the event stream. Every change goes through /v1/allocations
// with the session's CSRF token and one idempotency key per edit, so pressing Enter again
// after a lost answer cannot move credits twice.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const rows = document.getElementById("team-rows");
  const badge = document.getElementById("credits-badge");
  const MAX_CREDITS = 1e12;
  let refreshPending = false;

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "team-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function editing() {
    return rows.querySelector("input.number-input") !== null;
  }

  async function refresh() {
    if (editing()) { refreshPending = true; return; }
    refreshPending = false;
    const account = rows.dataset.account;
    const url = "/team/rows" + (account ? "?account=" + encodeURIComponent(account) : "");
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.status === 401) { window.location.assign("/team/login"); return; }
    if (response.ok && !editing()) rows.innerHTML = await response.text();
    await refreshBadge();
  }

  async function refreshBadge() {
    if (!badge) return;
    const response = await fetch("/v1/me", { credentials: "same-origin" });
    if (response.ok) {
      const me = await response.json();
      setBadge(me.credits.available, me.credits.held);
    }
  }

  function setBadge(available, held) {
    const shown = document.getElementById("badge-available");
    const heldEl = document.getElementById("badge-held");
    const changed = shown.textContent !== String(available);
    shown.textContent = String(available);
    heldEl.textContent = "+" + held + " held";
    heldEl.hidden = !held;
    if (changed) {
      badge.classList.add("flash");
      setTimeout(() => badge.classList.remove("flash"), 1200);
    }
  }

  async function problemText(response) {
    let message = "Not saved (HTTP " + response.status + ")";
    try { message = (await response.json()).detail || message; } catch (_) { /* not JSON */ }
    return message;
  }

  function startEdit(cell) {
    if (cell.querySelector("input")) return;
    const button = cell.querySelector("button.number");
    const error = cell.querySelector(".cell-error");
    const input = document.createElement("input");
    input.className = "number-input";
    input.inputMode = "numeric";
    input.autocomplete = "off";
    input.value = cell.dataset.value;
    input.setAttribute("aria-label", button.getAttribute("aria-label"));
    button.hidden = true;
    cell.insertBefore(input, button);
    input.focus();
    input.select();
    const edit = { key: null, value: null, busy: false };

    function showError(message) {
      error.textContent = message;
      error.hidden = false;
      input.classList.add("invalid");
    }

    function close() {
      input.remove();
      button.hidden = false;
      error.hidden = true;
      if (refreshPending) refresh();
    }

    async function submit() {
      const text = input.value.trim().replace(/[,_\s]/g, "");
      if (!/^\d+$/.test(text) || Number(text) > MAX_CREDITS) {
        showError("Type a whole number of credits, 0 or more.");
        return;
      }
      const value = Number(text);
      if (String(value) === cell.dataset.value) { close(); button.focus(); return; }
      // One key per edit and value: a retry of the same value replays, a new value is new.
      if (edit.value !== value) { edit.key = newKey(); edit.value = value; }
      const body = { set: value };
      body[cell.dataset.kind + "_id"] = Number(cell.dataset.id);
      edit.busy = true;
      input.disabled = true;
      try {
        const response = await fetch("/v1/allocations", {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "Content-Type": "application/json",
            "Idempotency-Key": edit.key,
            "X-CSRF-Token": csrf,
          },
          body: JSON.stringify(body),
        });
        if (response.status === 401) { window.location.assign("/team/login"); return; }
        if (response.ok) {
          input.remove();
          await refresh();
          const saved = rows.querySelector(
            '.editable[data-kind="' + cell.dataset.kind + '"][data-id="' + cell.dataset.id + '"]');
          if (saved) {
            const note = document.createElement("span");
            note.className = "saved";
            note.textContent = "Saved";
            saved.appendChild(note);
            setTimeout(() => note.remove(), 1500);
          }
          return;
        }
        showError(await problemText(response));
      } catch (_) {
        showError("The server did not answer: press Enter to try again.");
      } finally {
        edit.busy = false;
        input.disabled = false;
        if (input.isConnected) input.focus();
      }
    }

    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); submit(); }
      if (event.key === "Escape") { event.preventDefault(); close(); button.focus(); }
    });
    input.addEventListener("blur", () => {
      if (!edit.busy && error.hidden && input.value.trim() === cell.dataset.value) close();
    });
  }

  rows.addEventListener("click", (event) => {
    const button = event.target.closest("button.number");
    if (button) startEdit(button.closest(".editable"));
  });

  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/team/logout", {
      method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf },
    });
    window.location.assign("/team/login");
  });

  if (badge && window.EventSource) {
    const source = new EventSource("/v1/events", { withCredentials: true });
    source.addEventListener("outcome", (message) => {
      const event = JSON.parse(message.data);
      if (String(event.member_id) !== badge.dataset.memberId) return;
      if (typeof event.available === "number") setBadge(event.available, event.held || 0);
      refresh();
    });
    source.addEventListener("end", () => source.close());
  }
})();
