// rlhfkit labelling page, the shared part. Plain JavaScript, no build step.
//
// Each question type's handler (static/questions/<name>.js) registers itself with
// rlhfkit.register(name, factory). When the page has loaded, one handler is made for every
// question fieldset (its data-handler names the factory): factory(ctx) returns
// { collect() -> {answer} | {error}, key(k) -> true if it used the key }. This file collects
// every handler's answer, submits them to the JSON API (retrying with the same submission
// key, so a label is stored once), and routes the keyboard shortcuts.
(function () {
  "use strict";
  const factories = {};

  // A row of button.choice[data-value] in a fieldset, of which one is picked.
  function choices(fieldset) {
    const buttons = fieldset.querySelectorAll("button.choice");
    const pick = {
      value: null,
      set: function (value) {
        pick.value = String(value);
        buttons.forEach(function (b) {
          const on = b.dataset.value === pick.value;
          b.classList.toggle("selected", on);
          b.setAttribute("aria-pressed", on ? "true" : "false");
        });
      },
    };
    buttons.forEach(function (b) { b.addEventListener("click", function () { pick.set(b.dataset.value); }); });
    return pick;
  }

  window.rlhfkit = { register: function (name, factory) { factories[name] = factory; } };

  function start() {
    const root = document.getElementById("task");
    if (!root) return;
    const task = JSON.parse(document.getElementById("task-data").textContent);
    const project = root.dataset.project, itemId = root.dataset.item;
    const submissionKey = root.dataset.key, csrf = root.dataset.csrf;
    const started = performance.now();
    const status = document.getElementById("status");
    let busy = false;

    function say(msg, cls) { status.textContent = msg; status.className = cls || ""; }

    const handlers = [];
    root.querySelectorAll("fieldset.q").forEach(function (fieldset) {
      const make = factories[fieldset.dataset.handler];
      if (!make) { say("This page is missing the script for " + fieldset.dataset.q + ".", "error"); return; }
      const ctx = { q: fieldset.dataset.q, task: task, root: root, fieldset: fieldset, say: say, choices: choices };
      handlers.push({ q: ctx.q, h: make(ctx) });
    });

    function collect() {
      const answers = {};
      for (const { q, h } of handlers) {
        const got = h.collect();
        if (got.error) return got;
        answers[q] = got.answer;
      }
      return { answers: answers };
    }

    async function post(url, body) {
      return fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
    }

    async function submit() {
      if (busy) return;
      const got = collect();
      if (got.error) { say(got.error, "error"); return; }
      busy = true;
      say("Saving…");
      const body = { answers: got.answers, submission_key: submissionKey,
                     time_ms: Math.round(performance.now() - started) };
      const url = "/api/projects/" + encodeURIComponent(project) + "/items/" + itemId + "/labels";
      for (let attempt = 0; attempt < 4; attempt++) {
        try {
          const r = await post(url, body);  // same key on every retry: stored once
          if (r.ok) { say("Saved ✓", "ok"); window.location.assign("/p/" + encodeURIComponent(project)); return; }
          let detail = r.statusText;
          try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
          say("Not saved: " + detail, "error");
          busy = false;
          return;
        } catch (e) {
          say("Network problem, retrying…", "error");
          await new Promise(function (res) { setTimeout(res, 500 * (attempt + 1)); });
        }
      }
      say("Not saved: the server cannot be reached. Your answers are still here; try again.", "error");
      busy = false;
    }
    document.getElementById("submit").addEventListener("click", submit);
    document.getElementById("skip").addEventListener("click", async function () {
      const r = await post("/api/projects/" + encodeURIComponent(project) + "/items/" + itemId + "/release", {});
      if (r.ok) window.location.assign("/p/" + encodeURIComponent(project));
    });

    // keyboard shortcuts (not while typing): the first handler that uses a key takes it
    document.addEventListener("keydown", function (e) {
      if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); submit(); return; }
      const tag = (e.target && e.target.tagName) || "";
      if (tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "Enter") { e.preventDefault(); submit(); return; }
      for (const { h } of handlers) if (h.key && h.key(e.key)) return;
    });
  }
  // Handler scripts come after this one; they have all run by DOMContentLoaded.
  document.addEventListener("DOMContentLoaded", start);
})();
