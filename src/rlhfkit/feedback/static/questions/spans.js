// spans: select text in the response, pick a category (keys: the first letter of the first
// three categories); add free-text "missing information".
//
// Offsets: the browser counts a selection in UTF-16 units, the server in Unicode code points
// (an emoji is 2 units but 1 code point). Spans are kept and sent in code points; the
// selection is converted here, snapping outwards if it falls inside a surrogate pair. The
// text is drawn from the task JSON, not from the HTML (whose parser turns CRLF into LF), so
// DOM offsets and the response text agree character for character.
rlhfkit.register("spans", function (ctx) {
  const spanText = document.getElementById("span-text");
  const text = ctx.task.responses.length ? ctx.task.responses[0] : "";
  const cps = Array.from(text);  // one entry per code point
  const bounds = [0];  // bounds[i] = UTF-16 offset where code point i starts
  cps.forEach(function (c) { bounds.push(bounds[bounds.length - 1] + c.length); });
  const categories = ctx.task.categories || [];
  const spans = [], missing = [];

  function toCodePoints(u16, roundUp) {
    let lo = 0, hi = cps.length;  // the last boundary <= u16
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (bounds[mid] <= u16) lo = mid; else hi = mid - 1; }
    return (bounds[lo] === u16 || !roundUp) ? lo : lo + 1;
  }
  function slice(a, b) { return cps.slice(a, b).join(""); }

  function offsetIn(container, node, offset) {  // UTF-16 offset of (node, offset) in container's text
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

  function render() {
    const cuts = new Set([0, cps.length]);
    spans.forEach(function (s) { cuts.add(s.start); cuts.add(s.end); });
    const points = Array.from(cuts).sort(function (a, b) { return a - b; });
    spanText.textContent = "";
    for (let i = 0; i + 1 < points.length; i++) {
      const a = points[i], b = points[i + 1], piece = slice(a, b);
      const cover = spans.filter(function (s) { return s.start <= a && s.end >= b; });
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
    spans.forEach(function (s, i) {
      const li = document.createElement("li");
      li.textContent = s.category + ": “" + slice(s.start, s.end) + "”" + (s.note ? " — " + s.note : "") + " ";
      li.appendChild(removeButton(function () { spans.splice(i, 1); render(); }));
      list.appendChild(li);
    });
  }
  function removeButton(onClick) {
    const rm = document.createElement("button");
    rm.type = "button"; rm.textContent = "remove"; rm.className = "linklike";
    rm.addEventListener("click", onClick);
    return rm;
  }

  // Remember the last selection inside the response, so typing a note (which moves the
  // focus and clears the selection) before picking the category still works.
  let lastSel = null;
  function selection() {
    const sel = window.getSelection();
    if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return null;
    const range = sel.getRangeAt(0);
    if (!spanText.contains(range.startContainer) || !spanText.contains(range.endContainer)) return null;
    let start = offsetIn(spanText, range.startContainer, range.startOffset);
    let end = offsetIn(spanText, range.endContainer, range.endOffset);
    if (start === null || end === null) return null;
    if (start > end) { const t = start; start = end; end = t; }
    start = toCodePoints(start, false);
    end = toCodePoints(end, true);
    return start === end ? null : { start: start, end: end };
  }
  document.addEventListener("selectionchange", function () { const got = selection(); if (got) lastSel = got; });

  function mark(category) {
    const got = selection() || lastSel;
    if (!got) { ctx.say("Select some text in the response first.", "error"); return; }
    const note = document.getElementById("span-note");
    spans.push({ start: got.start, end: got.end, category: category, note: note.value || null });
    note.value = "";
    lastSel = null;
    const sel = window.getSelection();
    if (sel) sel.removeAllRanges();
    ctx.say("");
    render();
  }
  ctx.fieldset.querySelectorAll("button.cat").forEach(function (b) {
    b.addEventListener("mousedown", function (e) { e.preventDefault(); });  // keep the selection
    b.addEventListener("click", function () { mark(b.dataset.cat); });
  });

  const box = document.getElementById("missing-text");
  function renderMissing() {
    const list = document.getElementById("missing-list");
    list.textContent = "";
    missing.forEach(function (m, i) {
      const li = document.createElement("li");
      li.textContent = m + " ";
      li.appendChild(removeButton(function () { missing.splice(i, 1); renderMissing(); }));
      list.appendChild(li);
    });
  }
  document.getElementById("missing-add").addEventListener("click", function () {
    if (box.value.trim()) { missing.push(box.value.trim()); box.value = ""; renderMissing(); }
  });
  render();

  return {
    collect: function () {
      const all = missing.slice();
      if (box.value.trim()) all.push(box.value.trim());
      return { answer: { spans: spans.slice(), missing: all } };
    },
    key: function (k) {
      const c = categories.slice(0, 3).find(function (x) { return x[0] === k; });
      if (!c) return false;
      mark(c);
      return true;
    },
  };
});
