// Sign in with an API token. A login link carries it after '#', which the browser never
// sends to a server: read it, drop it from the address bar, and post it once.
"use strict";
(function () {
  const form = document.getElementById("login-form");
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function signIn(token) {
    error.hidden = true;
    const response = await fetch("/team/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ token: token.trim() }),
    });
    if (response.ok) {
      const body = await response.json();
      window.location.replace(body.next);
      return;
    }
    let message = "Sign-in failed (" + response.status + ")";
    try { message = (await response.json()).detail || message; } catch (_) { /* not JSON */ }
    error.textContent = message;
    error.hidden = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    signIn(input.value);
  });

  function fromLink() {
    const token = new URLSearchParams(window.location.hash.slice(1)).get("token");
    if (token) {
      history.replaceState(null, "", window.location.pathname);
      signIn(token);
    }
  }
  // A link opened in a tab already on this page changes only the fragment.
  window.addEventListener("hashchange", fromLink);
  fromLink();
})();
