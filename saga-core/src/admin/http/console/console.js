// The console's one script. Pages are read-only HTML; a button with data-post becomes an
// action: confirmed with its reason, then POSTed to the JSON API with the operator's token.
// The token lives in this tab's session storage and goes nowhere but that header.
"use strict";
(() => {
  const root = document.body.dataset.root || "";
  const token = document.getElementById("token");
  const operator = document.getElementById("operator");
  const flash = document.getElementById("flash");
  token.value = sessionStorage.getItem("sagaflow-token") || "";
  operator.value = sessionStorage.getItem("sagaflow-operator") || "";
  token.addEventListener("input", () => sessionStorage.setItem("sagaflow-token", token.value.trim()));
  operator.addEventListener("input", () => sessionStorage.setItem("sagaflow-operator", operator.value.trim()));

  const show = (kind, text) => {
    flash.textContent = text;
    flash.className = kind;
    flash.hidden = false;
  };

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-post]");
    if (!button) return;
    const reason = window.prompt(button.dataset.confirm + "\n\nWhy? (recorded with the action)", "");
    if (reason === null) return;
    const secret = token.value.trim();
    if (!secret) {
      show("error", "Enter the operator's token (top right) first: actions need it.");
      token.focus();
      return;
    }
    sessionStorage.setItem("sagaflow-token", secret);
    button.disabled = true;
    try {
      const response = await fetch(root + button.dataset.post, {
        method: "POST",
        headers: { "Authorization": "Bearer " + secret, "Content-Type": "application/json" },
        body: JSON.stringify({ reason: reason, by: operator.value.trim() || "console" }),
      });
      const answer = await response.json().catch(() => ({}));
      if (response.ok) {
        // The button stays disabled until the page reloads: a second click would act twice.
        show("ok", button.textContent + ": done. Reloading…");
        setTimeout(() => location.reload(), 700);
        return;
      }
      show("error", (answer.error || response.statusText) + " (HTTP " + response.status + ")");
    } catch (e) {
      show("error", "The endpoint did not answer: " + e);
    }
    button.disabled = false;
  });
})();
