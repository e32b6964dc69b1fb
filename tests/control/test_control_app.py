"""Preference RL for control, the parts around the loop: people's labels through the feedback app
(segments drawn as animations), asynchronous reward learning, presets and the report section."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("pygame")

from rlhfkit.control.agent import ReturnScaler  # noqa: E402
from rlhfkit.control.labelers import mu_of_answer  # noqa: E402
from rlhfkit.control.reward import RewardEnsemble, Segments  # noqa: E402
from rlhfkit.evaluate.runs import read_metrics

PASSWORD = "annotator-password-1"


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_cartpole_segments(n: int, seed: int = 0, length: int = 25) -> tuple[Segments, Segments]:
    from rlhfkit.control.agent import ActorCritic
    from rlhfkit.control.train import ControlConfig, Runner, _make_envs

    torch.manual_seed(seed)
    runner = Runner(_make_envs(ControlConfig(num_envs=4)), seed)
    runner.rollout(ActorCritic(4, 2), 200)
    rng = np.random.default_rng(seed)
    return runner.sample_segments(n, length, rng), runner.sample_segments(n, length, rng)


# -- small pure pieces ---------------------------------------------------------------------------


def test_return_scaler_by_hand():
    """gamma = 1/2, one env, rewards 1, 1 with the episode ending at the second step.

    Discounted returns seen: G_0 = 1, G_1 = 1/2 * 1 + 1 = 1.5; their mean is 1.25 and variance
    ((0.25)^2 + (0.25)^2) / 2 = 0.0625, so both rewards are divided by 0.25 -> 4. The episode end
    resets G: a next reward of 2 gives G = 2 (not 2 + 0.75).
    """
    scaler = ReturnScaler(num_envs=1, gamma=0.5)
    out = scaler(torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [1.0]]))
    torch.testing.assert_close(out, torch.tensor([[4.0], [4.0]]), rtol=1e-5, atol=1e-5)
    assert scaler.mean == pytest.approx(1.25) and scaler.var == pytest.approx(0.0625)
    scaler(torch.tensor([[2.0]]), torch.tensor([[0.0]]))
    assert scaler.running.tolist() == [2.0]


def test_mu_of_stored_pairwise_answer():
    """Canonical choice 0 is the item's first response = the first segment."""
    assert [mu_of_answer({"choice": c}) for c in (0, 1, "tie", "both_bad")] == [1.0, 0.0, 0.5, 0.5]


def test_presets_fill_only_unset_fields():
    from rlhfkit.control.train import ControlConfig, resolve_preset

    pend = resolve_preset(ControlConfig(env="Pendulum-v1", gamma=0.95))
    assert pend.gamma == 0.95 and pend.num_envs == 8 and pend.scale_rewards is True
    cart = resolve_preset(ControlConfig())
    assert (cart.gamma, cart.num_envs, cart.total_steps, cart.scale_rewards) == (0.99, 4, 100_000, False)


# -- segments as animations ----------------------------------------------------------------------


def test_segments_render_as_animated_gifs():
    """A CartPole segment that ends after 20 of 25 steps: 20 drawn frames, then the dimmed last
    frame with a red border for the absorbing steps; each frame lasts 1/50 s, the last 0.5 s."""
    from PIL import Image

    from rlhfkit.control.render import SegmentRenderer

    renderer = SegmentRenderer("CartPole-v1", width=120)
    obs = np.zeros((25, 4))
    obs[:, 2] = np.linspace(0.0, 0.25, 25)  # the pole tilts
    absorbing = np.arange(25) >= 20
    uri = renderer.data_uri(obs, np.zeros(25, dtype=np.int64), absorbing)
    assert uri.startswith("data:image/gif;base64,")
    gif = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert gif.size == (120, 80)
    durations, frames = [], []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
        frames.append(np.asarray(gif.convert("RGB"), dtype=float))
    assert sum(durations) == 24 * 20 + 500  # identical padded frames may be merged
    assert gif.n_frames >= 21 and not np.array_equal(frames[0], frames[19])  # it moves
    assert frames[-1].mean() < 0.7 * frames[0].mean()  # dimmed: "episode over"
    assert frames[-1][40, 1, 0] > 150 and frames[-1][40, 1, 1] < 80  # red border
    renderer.close()

    pendulum = SegmentRenderer("Pendulum-v1", width=64)
    angles = np.linspace(0, math.pi, 10)
    frames = pendulum.frames(np.stack([np.cos(angles), np.sin(angles), np.zeros(10)], 1),
                             np.ones((10, 1)), np.zeros(10, dtype=bool))
    assert len(frames) == 10 and frames[0].size == (64, 64)
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[-1]))
    with pytest.raises(ValueError, match="cannot draw"):
        SegmentRenderer("LunarLander-v3")


# -- labels from people through the feedback app -------------------------------------------------


class _LiveApp:
    """The feedback app served on loopback (uvicorn in a thread) over a SQLite file."""

    def __init__(self, db_url: str):
        import socket

        import uvicorn

        from rlhfkit.feedback.server import create_app
        from rlhfkit.feedback.store import Store

        self.store = Store(db_url)
        self.store.create_user("alice", PASSWORD)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.store), host="127.0.0.1",
                                                    port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.store.close()


class _Annotator(threading.Thread):
    """Alice answers every pair through the JSON API the labelling page uses, in turn left,
    right, tie, remembering what she said about each item."""

    def __init__(self, url: str, project: str, stop_after: int | None = None):
        super().__init__(daemon=True)
        self.url, self.project, self.stop_after = url, project, stop_after
        self.answered: dict[int, str] = {}
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self):
        from rlhfkit.feedback.client import FeedbackClient, FeedbackError

        try:
            client = FeedbackClient(self.url, "alice", PASSWORD)
            while not self.stop.is_set():
                if self.stop_after is not None and len(self.answered) >= self.stop_after:
                    return
                try:
                    task = client.next(self.project)
                except FeedbackError as err:
                    if err.status != 404:  # 404: the run has not created the project yet
                        raise
                    task = None
                if task is None:
                    time.sleep(0.1)
                    continue
                assert len(task["media"]) == 2
                assert all(m.startswith("data:image/gif;base64,") for m in task["media"])
                choice = ("left", "right", "tie")[len(self.answered) % 3]
                client.submit(self.project, task["item_id"], {"pairwise": {"choice": choice}},
                              submission_key=task["submission_key"])
                self.answered[task["item_id"]] = choice
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.errors.append(err)


def _expected_mu(choice: str, order: list[int]) -> float:
    """What the annotator meant, in segment terms: display position j showed response order[j]."""
    if choice == "tie":
        return 0.5
    shown = order[0 if choice == "left" else 1]
    return 1.0 if shown == 0 else 0.0


def test_app_labeler_returns_what_people_answered(tmp_path):
    """Pairs go into the store with their animations; the labeler hands back exactly the answers
    given through the API (undoing the per-annotator shuffle), and NaN for pairs nobody answered
    before the timeout."""
    from rlhfkit.control.labelers import AppLabeler

    app = _LiveApp(f"sqlite:///{tmp_path / 'f.db'}")
    seg_1, seg_2 = _random_cartpole_segments(7)
    labeler = AppLabeler(app.store.url, "cartpole", "CartPole-v1", timeout=30, poll_interval=0.05,
                         width=60)
    alice = _Annotator(app.url, "cartpole")
    alice.start()
    try:
        mu = labeler(seg_1[:6], seg_2[:6])
        alice.stop.set()
        alice.join(10)
        assert not alice.errors, alice.errors
        items = app.store.items("cartpole")
        labels = {lab["item_id"]: lab for lab in app.store.labels("cartpole")}
        expected = [_expected_mu(alice.answered[it.id], labels[it.id]["order"]) for it in items]
        assert mu.tolist() == expected
        assert set(alice.answered.values()) == {"left", "right", "tie"}
        assert {tuple(lab["order"]) for lab in labels.values()} == {(0, 1), (1, 0)}  # shuffled
        assert items[0].meta["true_returns"] == [float(seg_1.true_rewards[0].sum()),
                                                 float(seg_2.true_rewards[0].sum())]
        # nobody is answering now: the pair times out and is left out (NaN)
        labeler.timeout = 0.2
        assert math.isnan(labeler(seg_1[6:], seg_2[6:]).item())
    finally:
        alice.stop.set()
        labeler.close()
        app.close()


def test_control_run_learns_from_labels_answered_in_the_app(tmp_path):
    """``--labeler app`` (here through the Python API; the CLI builds the same config): the
    comparisons the agent learns from (written to comparisons.jsonl) are the answers given in
    the app, pair for pair; the run writes its report with the control section."""
    from rlhfkit.control.train import ControlConfig, train_control

    db = f"sqlite:///{tmp_path / 'f.db'}"
    app = _LiveApp(db)
    alice = _Annotator(app.url, "cp-people")
    alice.start()
    try:
        train_control(ControlConfig(
            env="CartPole-v1", labels=8, total_steps=1536, reward_update_every=512,
            reward_epochs=2, compare_true_reward=False, labeler="app", feedback_db=db,
            feedback_project="cp-people", label_poll_interval=0.05, render_width=60,
            output_dir=str(tmp_path / "run")))
    finally:
        alice.stop.set()
        alice.join(10)
        app.close()
    assert not alice.errors, alice.errors
    from rlhfkit.feedback.store import Store

    store = Store(db)
    items = store.items("cp-people")
    labels = {lab["item_id"]: lab for lab in store.labels("cp-people")}
    used = [json.loads(x) for x in (tmp_path / "run" / "comparisons.jsonl").read_text().splitlines()]
    assert len(items) == len(used) == 8
    assert [c["mu"] for c in used] == [_expected_mu(alice.answered[it.id], labels[it.id]["order"])
                                       for it in items]
    assert [[c["true_return_1"], c["true_return_2"]] for c in used] == [
        it.meta["true_returns"] for it in items]
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["labels"] == 8 and rows[-1]["reward/fits"] >= 2
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Preference-based RL for control" in report and report.count("<img") >= 2
    store.close()


# -- asynchronous reward learning ----------------------------------------------------------------


def test_async_learner_fits_in_the_background_and_hands_over_weights():
    """While the labeler is still waiting, collect() has nothing and the loop's model is
    untouched; once the round is done, the loop loads exactly the worker's fitted weights."""
    from rlhfkit.control.labelers import OracleLabeler
    from rlhfkit.control.learner import AsyncRewardLearner

    seg_1, seg_2 = _random_cartpole_segments(40)
    release = threading.Event()
    oracle = OracleLabeler()

    def slow_labeler(s1, s2):
        release.wait(10)
        return oracle(s1, s2)

    torch.manual_seed(0)
    model = RewardEnsemble(4, 2, members=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    worker = AsyncRewardLearner.around(model, labeler=slow_labeler, epochs=3, learning_rate=1e-2,
                                       rng=np.random.default_rng(0))
    try:
        worker.submit(seg_1, seg_2, 10)
        time.sleep(0.1)
        assert worker.collect() is None and worker.pending  # still labelling: keep training
        with pytest.raises(RuntimeError):
            worker.submit(seg_1, seg_2, 10)
        release.set()
        update = worker.collect(wait=True)
    finally:
        worker.close()
    assert update is not None and update.labels == 10 and update.fit == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.load_state_dict(update.state)
    fitted = worker.learner.model.state_dict()
    assert all(torch.equal(v, fitted[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_async_reward_run_picks_up_new_reward_weights(tmp_path):
    """A short CartPole run with --async-reward: the policy's reward model is refitted several
    times during the run (``reward/fits`` grows) and all labels are used."""
    from rlhfkit.control.train import ControlConfig, train_control

    cfg = ControlConfig(total_steps=6144, labels=60, reward_update_every=512, reward_epochs=3,
                        async_reward=True, compare_true_reward=False, output_dir=str(tmp_path))
    rows = train_control(cfg)["learned"]
    fits = [r["reward/fits"] for r in rows]
    assert fits == sorted(fits) and fits[-1] >= 3
    assert rows[-1]["labels"] == 60
    assert rows[-1]["predicted_return"] is not None
    assert len((tmp_path / "comparisons.jsonl").read_text().splitlines()) == 60


# -- the report section --------------------------------------------------------------------------


def test_control_section_from_rows():
    """Two agents' rows: the summary table has the numbers worked out by hand."""
    from rlhfkit.control.report import control_section, summary_rows

    rows = []
    for step, (learned_ret, true_ret) in enumerate([(20, 30), (100, 480), (480, 500),
                                                     (490, 500), (500, 500)], start=1):
        rows.append({"reward_source": "learned", "step": step * 1000, "labels": 10 * step,
                     "true_return": float(learned_ret), "rewards/accuracy": 0.9,
                     "reward/fits": step})
        rows.append({"reward_source": "true", "step": step * 1000, "labels": 0,
                     "true_return": float(true_ret)})
    summary = summary_rows(rows, "CartPole-v1", tail=0.4)
    learned, true = summary
    assert learned["labels"] == 50 and true["labels"] == "—"
    # the last 40% of 5000 steps: steps >= 3000 -> (480 + 490 + 500) / 3
    assert learned["mean true return, last 40% of steps"] == pytest.approx(490.0)
    assert learned["first step with return ≥ 475"] == 3000
    assert true["first step with return ≥ 475"] == 2000
    html = control_section(rows, env="CartPole-v1").html()
    assert html.startswith("<h2>Preference-based RL for control</h2>")
    assert html.count("<img") == 2 and "<table>" in html
