"""End to end in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

Logs in through the form, answers every question type with the mouse and the keyboard
shortcuts, and checks each answer in the export. Screenshots of every page go to
``test-artifacts/screenshots/``. Chromium comes from ``scripts/test-services.sh``; if it is
missing these tests fail (they never download a browser).
"""

from __future__ import annotations

import threading
import time

import pytest

from conftest import ARTIFACTS, PASSWORD, free_port
from rlhfkit.feedback.store import Store
from rlhfkit.feedback.transfer import project_records

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

RESPONSE = "The capital of Australia is Sydney. It has a big opera house and many beaches."
PROJECTS = {
    "write_prompt": ({"prompt": "Write a question a student might ask about the Moon."}, None),
    "demonstration": ({"prompt": "Explain photosynthesis in one sentence."}, None),
    "binary": ({"prompt": "What is the capital of Australia?", "responses": [RESPONSE]}, None),
    "likert": ({"prompt": "What is the capital of Australia?", "responses": [RESPONSE]}, None),
    "spans": ({"prompt": "What is the capital of Australia?", "responses": [RESPONSE]}, None),
    "correction": ({"prompt": "What is the capital of Australia?", "responses": [RESPONSE]}, None),
    "pairwise": ({"prompt": "Give me a tip for sleeping better.",
                  "responses": [{"text": "Keep a regular bedtime and a dark, cool room.", "model": "rlhf"},
                                {"text": "Sleep.", "model": "sft"}]}, None),
    "rank": ({"prompt": "Name a fruit.", "responses": ["Apple.", "A banana, which is yellow.", "<b>Kiwi</b>"]}, None),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import uvicorn

    from rlhfkit.feedback.server import create_app

    db = tmp_path_factory.mktemp("browser") / "feedback.db"
    store = Store(f"sqlite:///{db}")
    store.create_user("admin", PASSWORD, role="admin")
    store.create_user("alice", PASSWORD)
    store.create_user("bob", PASSWORD)
    for q, (item, _) in PROJECTS.items():
        store.create_project(q, [q], overlap=2, guidelines=f"Guidelines for {q}: be careful and kind.")
        store.add_items(q, [item])
    store.create_project("xss", ["binary"])
    store.add_items("xss", [{"prompt": "<script>window.__pwned = 1</script>Hi?",
                             "responses": ['<img src=x onerror="window.__pwned=2">Hello!<script>window.__pwned=3</script>']}])
    store.create_project("unicode", ["spans"])
    store.add_items("unicode", [{"prompt": "Mark the mistakes.", "responses": [UNICODE_TEXT]}])
    store.create_project("agree", ["pairwise"], overlap=2)
    store.add_items("agree", [dict(PROJECTS["pairwise"][0], prompt=f"Tip {i}?") for i in range(3)])

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(10)
    store.close()


@pytest.fixture(scope="module")
def browser():
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run `bash scripts/test-services.sh` (installs Debian's chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def login(browser, base, name, viewport=None):
    ctx = browser.new_context(viewport=viewport or {"width": 1200, "height": 900})
    page = ctx.new_page()
    page.goto(base + "/login")
    page.fill('input[name="username"]', name)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(base + "/")
    return ctx, page


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def select_text(page, selector, start, end):
    page.evaluate("""([sel, start, end]) => {
        const el = document.querySelector(sel);
        const node = el.firstChild;
        const r = document.createRange();
        r.setStart(node, start); r.setEnd(node, end);
        const s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
    }""", [selector, start, end])


def answer(page, question, submit=True):
    """Answer the one item of ``question`` like a person (keyboard where there is a shortcut)."""
    if question == "write_prompt":
        page.fill('textarea[name="write_prompt"]', "Why does the Moon have phases?")
        if submit:
            page.keyboard.press("Control+Enter")  # submit from inside the text box
        return
    if question == "demonstration":
        page.fill('textarea[name="demonstration"]', "Plants turn light, water and CO2 into sugar and oxygen.")
    elif question == "correction":
        page.fill('textarea[name="correction"]', "The capital of Australia is Canberra.")
    elif question == "binary":
        page.keyboard.press("n")  # 👎
        assert page.get_attribute('button[data-value="down"]', "aria-pressed") == "true"
    elif question == "likert":
        page.keyboard.press("2")
        assert "selected" in page.get_attribute('button[data-q="likert"][data-value="2"]', "class")
    elif question == "pairwise":
        # prefer the long answer wherever the shuffle put it
        left = page.inner_text("#resp-0 .text")
        page.keyboard.press("1" if left.startswith("Keep") else "2")
    elif question == "rank":
        for pos in range(3):
            text = page.inner_text(f"#resp-{pos} .text")
            rank = {"A banana, which is yellow.": "1", "Apple.": "2", "<b>Kiwi</b>": "3"}[text]
            page.select_option(f'select[data-rank-pos="{pos}"]', rank)
    elif question == "spans":
        start = RESPONSE.index("Sydney")
        select_text(page, "#span-text", start, start + len("Sydney"))
        page.fill("#span-note", "It is Canberra.")
        page.click('button[data-cat="untruthful"]')
        assert page.inner_text("#span-text mark") == "Sydney"
        page.evaluate("document.activeElement.blur()")  # shortcuts are off while typing
        select_text(page, "#span-text", 0, 3)  # first text node is now "The capital … is "
        page.keyboard.press("i")  # shortcut: irrelevant
        assert page.locator("#span-list li").count() == 2
        page.click("#span-list li:nth-child(2) button")  # ...and remove it again
        page.fill("#missing-text", "Canberra was purpose-built as the capital.")
        page.click("#missing-add")
    if not submit:
        return
    page.keyboard.press("Enter") if question in ("binary", "pairwise") else page.click("#submit")


EXPECT = {
    "write_prompt": lambda r: r.kind == "prompt" and r.prompt == "Why does the Moon have phases?",
    "demonstration": lambda r: r.kind == "demonstration" and r.response.startswith("Plants turn light"),
    "correction": lambda r: r.kind == "demonstration" and r.response == "The capital of Australia is Canberra."
                            and r.meta["corrects"] == RESPONSE,
    "binary": lambda r: r.kind == "binary" and r.label is False,
    "likert": lambda r: r.kind == "score" and r.score == 2.0,
    "pairwise": lambda r: r.kind == "comparison" and r.chosen.startswith("Keep") and not r.tie,
    "rank": lambda r: r.kind == "ranking" and r.ranks == [1, 0, 2],
    "spans": lambda r: r.kind == "span" and [(s.start, s.end, s.category, s.note) for s in r.spans]
                       == [(RESPONSE.index("Sydney"), RESPONSE.index("Sydney") + 6, "untruthful", "It is Canberra.")]
                       and r.missing == ["Canberra was purpose-built as the capital."],
}


# Emoji (2 UTF-16 units each, one with a skin-tone modifier), CJK, a combining accent and CRLF
# line ends: the browser counts UTF-16 units and its HTML parser turns CRLF into LF, the server
# counts code points of the exact text.
UNICODE_TEXT = "😀👍🏽 你好世界 — e\u0301te\r\nThe capital is Sydney.\r\nBye 🎉!"


def u16(text, i):
    """UTF-16 offset of code point ``i``: what a DOM Range counts."""
    return len(text[:i].encode("utf-16-le")) // 2


def select_u16(page, selector, start, end):
    """Select UTF-16 offsets [start, end) of an element's text, across its text nodes."""
    page.evaluate("""([sel, start, end]) => {
        const el = document.querySelector(sel);
        const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
        const r = document.createRange();
        let total = 0, n, setStart = false;
        while ((n = walker.nextNode())) {
            const len = n.textContent.length;
            if (!setStart && start <= total + len) { r.setStart(n, start - total); setStart = true; }
            if (end <= total + len) { r.setEnd(n, end - total); break; }
            total += len;
        }
        const s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
    }""", [selector, start, end])


def test_span_offsets_over_emoji_cjk_combining_marks_and_crlf(live, browser):
    base, store = live
    ctx, page = login(browser, base, "alice")
    page.goto(f"{base}/p/unicode")
    t = UNICODE_TEXT
    targets = [("你好", "irrelevant"), ("e\u0301te", "untruthful"), ("Sydney", "untruthful")]
    for piece, category in targets:
        i = t.index(piece)
        select_u16(page, "#span-text", u16(t, i), u16(t, i + len(piece)))
        page.click(f'button[data-cat="{category}"]')
    # a selection that ends inside a surrogate pair (half of the party emoji) grows to cover it
    i = t.index("🎉")
    select_u16(page, "#span-text", u16(t, i - 4), u16(t, i) + 1)
    page.click('button[data-cat="irrelevant"]')
    listed = page.locator("#span-list li").all_inner_texts()
    assert [x.split("“")[1].split("”")[0] for x in listed] == ["你好", "e\u0301te", "Sydney", "Bye 🎉"]
    # the page still shows the text exactly, CRLF included
    assert page.evaluate("document.getElementById('span-text').textContent") == t
    shot(page, "spans-unicode")
    page.click("#submit")
    page.wait_for_selector("#all-done", timeout=10_000)
    (rec,) = project_records(store, "unicode")
    assert [t[sp.start:sp.end] for sp in rec.spans] == ["你好", "e\u0301te", "Sydney", "Bye 🎉"]
    assert [sp.category for sp in rec.spans] == ["irrelevant", "untruthful", "untruthful", "irrelevant"]
    ctx.close()


def test_every_question_type_in_chromium(live, browser):
    base, store = live
    ctx, page = login(browser, base, "alice")
    shot(page, "00-projects")
    for question in PROJECTS:
        page.goto(f"{base}/p/{question}")
        assert page.is_visible("#task"), question
        answer(page, question)
        page.wait_for_selector("#all-done", timeout=10_000)  # saved, and the queue is empty
        (recs,) = [project_records(store, question)]
        assert len(recs) == 1 and EXPECT[question](recs[0]), (question, recs[0].to_dict())
        assert recs[0].annotator == "alice" and recs[0].meta["time_ms"] > 0
    ctx.close()

    # bob (overlap 2) fills in the same items without submitting: screenshots of each page
    ctx, page = login(browser, base, "bob")
    for question in PROJECTS:
        page.goto(f"{base}/p/{question}")
        answer(page, question, submit=False)
        shot(page, f"label-{question}")
    ctx.close()


def test_phone_width_pairwise_and_keyboard(live, browser):
    base, store = live
    ctx, page = login(browser, base, "bob", viewport={"width": 390, "height": 844})
    page.goto(f"{base}/p/agree")
    # the two responses stack on a phone: the right one sits below the left one
    left, right = page.locator("#resp-0").bounding_box(), page.locator("#resp-1").bounding_box()
    assert right["y"] >= left["y"] + left["height"] - 1 and left["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    page.keyboard.press("3")  # tie
    shot(page, "phone-pairwise")
    page.keyboard.press("Enter")
    page.wait_for_load_state("networkidle")
    labels = store.labels("agree")
    assert len(labels) == 1 and labels[0]["answers"]["pairwise"]["choice"] == "tie"
    ctx.close()


def test_script_in_content_is_shown_as_text(live, browser):
    base, _ = live
    ctx, page = login(browser, base, "alice")
    page.goto(f"{base}/p/xss")
    assert page.evaluate("window.__pwned") is None
    assert "<script>window.__pwned = 1</script>Hi?" in page.inner_text(".prompt .text")
    assert "onerror" in page.inner_text("#resp-0 .text")
    assert page.locator("#resp-0 img").count() == 0
    shot(page, "xss-inert")
    ctx.close()


def test_admin_sees_agreement_and_exports(live, browser):
    base, store = live
    # two annotators label the overlap project through the pages
    for name in ("alice", "admin"):
        ctx, page = login(browser, base, name)
        page.goto(f"{base}/p/agree")
        while not page.is_visible("#all-done"):
            page.keyboard.press("1")
            with page.expect_navigation():  # the page loads the next item once saved
                page.keyboard.press("Enter")
        ctx.close()
    ctx, page = login(browser, base, "admin")
    page.goto(f"{base}/admin/p/agree")
    assert page.is_visible("#agreement") and page.is_visible("#annotators")
    assert "alice" in page.inner_text("#annotators")
    assert "built-in method" not in page.inner_text("main")
    # 3 items x overlap 2; bob still holds the lock on the third after his phone-width test
    assert "2/3 items complete" in page.inner_text("main")
    shot(page, "admin-project")
    page.goto(f"{base}/admin")
    shot(page, "admin")
    page.goto(f"{base}/admin/p/agree")
    with page.expect_download() as dl:
        page.click("#export-link")
    text = open(dl.value.path(), encoding="utf-8").read()
    assert text.count('"kind": "comparison"') == len(store.labels("agree"))
    ctx.close()


def test_annotator_is_kept_out_of_admin_pages(live, browser):
    base, _ = live
    ctx, page = login(browser, base, "bob")
    r = page.goto(f"{base}/admin")
    assert r.status == 403 and "admins only" in page.inner_text("main")
    ctx.close()
