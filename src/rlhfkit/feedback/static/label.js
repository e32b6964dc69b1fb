// rlhfkit labeling page: collects the answers to every question on the page and submits
// them to the JSON API. Plain JavaScript, no build step. Keyboard: see the <kbd> hints.
(function () {
  "use strict";
  const root = document.getElementById("task");
  if (!root) return;
  const task = JSON.parse(document.getElementById("task-data").textContent);
  const project = root.dataset.project, itemId = root.dataset.item;
  const submissionKey = root.dataset.key, csrf = root.dataset.csrf;
  const started = performance.now();
  const state = { binary: null, pairwise: null, likert: null, spans: [], missing: [] };
  const status = document.getElementById("status");
  let busy = false;

  function say(msg, cls) { status.textContent = msg; status.className = cls || ""; }

  // --- single-choice questions (binary, pairwise, likert) ---
  function choose(q, value) {
    state[q] = value;
    document.querySelectorAll('button.choice[data-q="' + q + '"]').forEach(function (b) {
      b.classList.toggle("selected", b.dataset.value === String(value));
      b.setAttribute("aria-pressed", b.dataset.value === String(value) ? "true" : "false");
    });
  }
  document.querySelectorAll("button.choice").forEach(function (b) {
    b.addEventListener("click", function () { choose(b.dataset.q, b.dataset.value); });
  });

  // --- spans: select text in the response, pick a category ---
  const spanText = document.getElementById("span-text");
  const responseText = task.responses.length ? task.responses[0] : "";
  const categories = task.categories || [];

  function offsetIn(container, node, offset) {
    // character offset of (node, offset) from the start of container's text
    const walker = document.createTreeWalker(container, NodeFilter.SHOW_TEXT);
    let total = 0, n;
    while ((n = walker.nextNode())) {
      if (n === node) return total + offset;
      total += n.textContent.length;
    }
    if (node === container) {  // offset counts child nodes
      let t = 0;
      for (let i = 0; i < offset; i++) t += container.childNodes[i].textContent.length;
      return t;
    }
    return null;
  }

  function renderSpans() {
    if (!spanText) return;
    const cuts = new Set([0, responseText.length]);
    state.spans.forEach(function (s) { cuts.add(s.start); cuts.add(s.end); });
    const points = Array.from(cuts).sort(function (a, b) { return a - b; });
    spanText.textContent = "";
    for (let i = 0; i + 1 < points.length; i++) {
      const a = points[i], b = points[i + 1], piece = responseText.slice(a, b);
      const cover = state.spans.filter(function (s) { return s.start <= a && s.end >= b; });
      if (cover.length) {
        const m = document.createElement("mark");
        m.className = "cat-" + (categories.indexOf(cover[cover.length - 1].category) % 6);
        m.title = cover.map(function (s) { return s.category + (s.note ? ": " + s.note : ""); }).join("; ");
        m.textContent = piece;
        spanText.appendChild(m);
      } else {
        spanText.appendChild(document.createTextNode(piece));
      }
    }
    const list = document.getElementById("span-list");
    list.textContent = "";
    state.spans.forEach(function (s, i) {
      const li = document.createElement("li");
      li.textContent = s.category + ": “" + responseText.slice(s.start, s.end) + "”" + (s.note ? " — " + s.note : "") + " ";
      const rm = document.createElement("button");
      rm.type = "button"; rm.textContent = "remove"; rm.className = "linklike";
      rm.addEventListener("click", function () { state.spans.splice(i, 1); renderSpans(); });
      li.appendChild(rm);
      list.appendChild(li);
    });
  }

  // Remember the last selection inside the response, so typing a note (which moves the
  // focus and clears the selection) before picking the category still works.
  let lastSel = null;
  function selectionOffsets() {
    const sel = window.getSelection();
    if (!spanText || !sel || sel.rangeCount === 0 || sel.isCollapsed) return null;
    const range = sel.getRangeAt(0);
    if (!spanText.contains(range.startContainer) || !spanText.contains(range.endContainer)) return null;
    let start = offsetIn(spanText, range.startContainer, range.startOffset);
    let end = offsetIn(spanText, range.endContainer, range.endOffset);
    if (start === null || end === null) return null;
    if (start > end) { const t = start; start = end; end = t; }
    return start === end ? null : { start: start, end: end };
  }
  document.addEventListener("selectionchange", function () {
    const got = selectionOffsets();
    if (got) lastSel = got;
  });

  function markSelection(category) {
    const got = selectionOffsets() || lastSel;
    if (!got) {
      say("Select some text in the response first.", "error");
      return;
    }
    const note = document.getElementById("span-note");
    state.spans.push({ start: got.start, end: got.end, category: category, note: note.value || null });
    note.value = "";
    lastSel = null;
    const sel = window.getSelection();
    if (sel) sel.removeAllRanges();
    say("");
    renderSpans();
  }
  document.querySelectorAll("button.cat").forEach(function (b) {
    b.addEventListener("mousedown", function (e) { e.preventDefault(); });  // keep the selection
    b.addEventListener("click", function () { markSelection(b.dataset.cat); });
  });
  const missingAdd = document.getElementById("missing-add");
  function renderMissing() {
    const list = document.getElementById("missing-list");
    list.textContent = "";
    state.missing.forEach(function (m, i) {
      const li = document.createElement("li");
      li.textContent = m + " ";
      const rm = document.createElement("button");
      rm.type = "button"; rm.textContent = "remove"; rm.className = "linklike";
      rm.addEventListener("click", function () { state.missing.splice(i, 1); renderMissing(); });
      li.appendChild(rm);
      list.appendChild(li);
    });
  }
  if (missingAdd) {
    missingAdd.addEventListener("click", function () {
      const box = document.getElementById("missing-text");
      if (box.value.trim()) { state.missing.push(box.value.trim()); box.value = ""; renderMissing(); }
    });
  }
  renderSpans();

  // --- collecting and submitting ---
  function textOf(name) {
    const el = document.querySelector('textarea[name="' + name + '"]');
    return el ? el.value : "";
  }
  function collect() {
    const answers = {};
    for (const q of task.questions) {
      if (q === "write_prompt" || q === "demonstration" || q === "correction") {
        const t = textOf(q);
        if (!t.trim()) return { error: "Please write the " + (q === "write_prompt" ? "prompt" : "response") + " first." };
        answers[q] = { text: t };
      } else if (q === "binary") {
        if (!state.binary) return { error: "Choose 👍 or 👎." };
        answers[q] = { value: state.binary };
      } else if (q === "pairwise") {
        if (!state.pairwise) return { error: "Choose which response you prefer." };
        answers[q] = { choice: state.pairwise };
      } else if (q === "likert") {
        if (!state.likert) return { error: "Choose a rating from 1 to 7." };
        answers[q] = { score: parseInt(state.likert, 10) };
      } else if (q === "rank") {
        const ranks = [];
        document.querySelectorAll("select[data-rank-pos]").forEach(function (s) {
          ranks[parseInt(s.dataset.rankPos, 10)] = s.value ? parseInt(s.value, 10) : null;
        });
        if (ranks.some(function (r) { return r === null; })) return { error: "Give every response a rank." };
        answers[q] = { ranks: ranks };
      } else if (q === "spans") {
        const pending = document.getElementById("missing-text");
        const missing = state.missing.slice();
        if (pending && pending.value.trim()) missing.push(pending.value.trim());
        answers[q] = { spans: state.spans, missing: missing };
      }
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

  // --- keyboard shortcuts (not while typing) ---
  const has = function (q) { return task.questions.indexOf(q) >= 0; };
  document.addEventListener("keydown", function (e) {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); submit(); return; }
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k === "Enter") { e.preventDefault(); submit(); return; }
    if (has("binary") && (k === "y" || k === "n")) { choose("binary", k === "y" ? "up" : "down"); return; }
    if (has("pairwise") && ["1", "2", "3", "4"].indexOf(k) >= 0) {
      choose("pairwise", ["left", "right", "tie", "both_bad"][parseInt(k, 10) - 1]); return;
    }
    if (has("likert") && k >= "1" && k <= "7") { choose("likert", k); return; }
    if (has("spans")) {
      const c = categories.slice(0, 3).find(function (x) { return x[0] === k; });
      if (c) markSelection(c);
    }
  });
})();
