"""Responses that carry an image or animation (``media``), e.g. trajectory segments to compare."""

from __future__ import annotations

import base64

import pytest

from rlhfkit.feedback import questions as Q
from rlhfkit.feedback.store import StoreError

PASSWORD = "media-password-1"
# a 1x1 GIF, and a different 1x1 PNG header: only the bytes' identity matters here
GIF = "data:image/gif;base64," + base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n0000").decode()


def test_is_media_accepts_only_base64_image_data_uris():
    assert Q.is_media(GIF) and Q.is_media(PNG)
    for bad in ("javascript:alert(1)", "data:image/svg+xml;base64,PHN2Zz4=",
                "data:text/html;base64,PGI+", "data:image/gif,GIF89a", "https://x/y.gif",
                GIF + '" onerror="alert(1)', GIF + "\n", None, 3,
                "data:image/gif;base64," + "A" * Q.MAX_MEDIA):
        assert not Q.is_media(bad), bad


def test_items_keep_media_and_tasks_show_it_in_display_order(sqlite_store):
    store = sqlite_store
    store.create_project("clips", ["pairwise"])
    alice = store.create_user("alice", PASSWORD)
    store.add_items("clips", [
        {"prompt": "Which clip?", "responses": [{"text": "a", "media": GIF},
                                                 {"text": "b", "media": PNG}]},
        {"prompt": "Plain text", "responses": ["x", "y"]},
    ])
    first, plain = store.items("clips")
    assert [r.get("media") for r in first.responses] == [GIF, PNG]
    assert all("media" not in r for r in plain.responses)  # stored as before
    seen = {}
    for _ in range(2):
        task = store.next_task(alice, "clips")
        seen[task.prompt] = task.to_json()
        store.submit(alice, "clips", task.item_id, {"pairwise": {"choice": "left"}},
                     task.submission_key)
    shown = seen["Which clip?"]
    # the media follow their responses through the annotator's shuffle
    assert dict(zip(shown["responses"], shown["media"])) == {"a": GIF, "b": PNG}
    assert "media" not in seen["Plain text"]
    with pytest.raises(StoreError, match="media must be a base64 data: URI"):
        store.add_items("clips", [{"prompt": "p", "responses": [
            {"text": "a", "media": "javascript:alert(1)"}, "b"]}])


def test_labelling_page_shows_the_clips(sqlite_store):
    """The page draws each response's media as an <img> above its text (allowed by the CSP's
    img-src data:), and the answer goes in as for any pairwise item."""
    from fastapi.testclient import TestClient

    from rlhfkit.feedback.server import create_app

    store = sqlite_store
    store.create_user("alice", PASSWORD)
    store.create_project("clips", ["pairwise"])
    store.add_items("clips", [{"prompt": "Which clip?", "responses": [
        {"text": "clip 1", "media": GIF}, {"text": "clip 2", "media": PNG}]}])
    client = TestClient(create_app(store))
    assert client.post("/api/login", json={"username": "alice", "password": PASSWORD}).status_code == 200
    page = client.get("/p/clips")
    assert page.status_code == 200
    assert page.text.count('<img class="media"') == 2
    assert f'src="{GIF}"' in page.text and f'src="{PNG}"' in page.text
    assert "img-src 'self' data:" in page.headers["content-security-policy"]
