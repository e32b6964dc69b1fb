"""Reward functions from the command line: ``py:FILE:FUNCTION``, ``http:URL``, ``env``, ``task:``.

A function in a file is called with the prompts, completions and the task's references (by the
names it takes, or in order; sync or async); its errors name the function and the sample. A
remote scorer on a loopback server is retried on 503 and refused on 400, and a slow one times
out with the URL in the message.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.rewards.plugins import PluginError, RewardFunctionError, load_object
from rlhfkit.rewards.registry import build_sources
from rlhfkit.rewards.sources import SourceContext, combine
from rlhfkit.tasks import get_task
from rlhfkit.train.inputs import reward_sources

PLUGIN = '''
import asyncio

def exact(prompts, completions, references):
    return [float(c.strip() == f"Answer: {r}") for c, r in zip(completions, references)]

def lengths(completions):
    return [len(c) for c in completions]

def anything(**kwargs):
    return [float(len(kwargs["references"]))] * len(kwargs["completions"])

def ordered(p, c):
    return [float(len(x)) for x in c]

async def slow_judge(prompts, completions):
    await asyncio.sleep(0)
    return [1.0 if "good" in c else 0.0 for c in completions]

def picky(completions):
    for c in completions:
        if "boom" in c:
            raise KeyError("no score for that")
    return [0.0] * len(completions)

def short(completions):
    return [1.0]

def nan_on_two(completions):
    return [float("nan") if c == "two" else 1.0 for c in completions]

NOT_A_FUNCTION = 3
'''


class FakeRollout(SimpleNamespace):
    def __len__(self):
        return len(self.texts)


def rollout_of(prompts, texts):
    n = len(texts)
    mask = torch.ones(n, 3, dtype=torch.bool)
    return FakeRollout(prompts=list(prompts), texts=list(texts), response_mask=mask,
                       ended=torch.ones(n, dtype=torch.bool), extras={})


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(PLUGIN)
    return path


def test_a_function_in_a_file_gets_prompts_completions_and_the_tasks_references(plugin):
    task = get_task("arithmetic")
    prompts = task.prompts("eval")[:3]
    refs = task.references(prompts)
    ctx = SourceContext(tokenizer=None)
    sources = reward_sources(f"py:{plugin}:exact", "", ctx, task)
    texts = [f"Answer: {refs[0]}", f"Answer: {refs[1] + 1}", "nothing"]
    terms = combine(sources, rollout_of(prompts, texts))
    assert terms.raw.tolist() == [1.0, 0.0, 0.0]
    assert terms.dense[0][0] == [(2, 1.0)]  # one score, on the last token


def test_functions_are_called_by_their_parameter_names_or_in_order_and_async(plugin):
    ctx = SourceContext(tokenizer=None, references=lambda ps: ["r"] * len(ps))
    r = rollout_of(["a", "b"], ["good one", "meh"])
    spec = (f"len=py:{plugin}:lengths,kw=py:{plugin}:anything,pos=py:{plugin}:ordered,"
            f"judge=py:{plugin}:slow_judge")
    terms = combine(build_sources(spec, "len=0.5,judge=2", ctx), r)
    assert terms.by_source["len"].tolist() == [8.0, 3.0]
    assert terms.by_source["kw"].tolist() == [2.0, 2.0]  # **kwargs gets all three lists
    assert terms.by_source["pos"].tolist() == [8.0, 3.0]
    assert terms.by_source["judge"].tolist() == [1.0, 0.0]
    assert terms.raw.tolist() == [0.5 * 8 + 2 + 8 + 2, 0.5 * 3 + 2 + 3 + 0]


def test_a_module_function_loads_by_its_dotted_name():
    fn = load_object("rlhfkit.stats:pass_at_k")
    assert fn(2, 1, 1) == 0.5


def test_errors_name_the_function_and_the_sample(plugin):
    ctx = SourceContext(tokenizer=None)
    r = rollout_of(["p0", "p1", "p2"], ["fine", "boom here", "also fine"])
    (source,) = build_sources(f"py:{plugin}:picky", "", ctx)
    with pytest.raises(RewardFunctionError) as err:
        source.fn(r)
    message = str(err.value)
    assert "picky" in message and "sample 1" in message and "'boom here'" in message
    assert "KeyError" in message and "'p1'" in message
    (source,) = build_sources(f"py:{plugin}:short", "", ctx)
    with pytest.raises(RewardFunctionError, match="returned 1 rewards for 3 completions"):
        source.fn(r)
    (source,) = build_sources(f"py:{plugin}:nan_on_two", "", ctx)
    with pytest.raises(RewardFunctionError, match=r"nan for sample 1 .*'two'"):
        source.fn(rollout_of(["a", "b"], ["one", "two"]))
    assert RewardFunctionError.user_facing and PluginError.user_facing


@pytest.mark.parametrize("spec,message", [
    ("py:{plugin}:missing", "has no 'missing'"),
    ("py:{plugin}:NOT_A_FUNCTION", "not a function"),
    ("py:/nowhere/x.py:f", "is not a file"),
    ("py:no_such_module_xyz:f", "cannot import"),
    ("py:{plugin}", "expected FILE.py:NAME"),
])
def test_bad_specs_fail_with_one_clear_line(plugin, spec, message):
    with pytest.raises(PluginError, match=message):
        build_sources(spec.format(plugin=plugin), "", SourceContext(tokenizer=None))


def test_task_source_is_the_tasks_verifier_and_env_needs_an_environment():
    task = get_task("arithmetic")
    prompt = task.prompts("eval")[0]
    ref = task.reference_of(prompt)
    (source,) = reward_sources("task:arithmetic", "", SourceContext(tokenizer=None))
    terms = combine([source], rollout_of([prompt, prompt], [f"Answer: {ref}", "Answer: -5"]))
    assert terms.raw.tolist() == [1.0, 0.0]
    (env,) = build_sources("env", "", SourceContext(tokenizer=None))
    r = rollout_of(["a"], ["x"])
    with pytest.raises(RewardFunctionError, match="--environment"):
        env.fn(r)
    r.extras["env_rewards"] = [[(0, 0.5), (2, 1.0)]]
    assert combine([env], r).raw.tolist() == [1.5]


# ---------------------------------------------------------------------------------------
# Remote scorers
# ---------------------------------------------------------------------------------------


class Scorer(BaseHTTPRequestHandler):
    """Scores a completion by its length; /flaky fails twice with 503; /bad answers 400."""

    calls: dict[str, int] = {}
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Scorer.bodies.append(body)
        count = Scorer.calls[self.path] = Scorer.calls.get(self.path, 0) + 1
        if self.path == "/flaky" and count <= 2:
            return self._send(503, {"error": "busy"})
        if self.path == "/bad":
            return self._send(400, {"error": "no completions field"})
        if self.path == "/slow":
            threading.Event().wait(1.0)
        if self.path == "/list":
            return self._send(200, [len(c) for c in body["completions"]])
        return self._send(200, {"rewards": [float(len(c)) for c in body["completions"]]})

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except BrokenPipeError:  # /slow: the client gave up waiting, as it should
            pass

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scorer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_remote_scorer_gets_the_batch_and_its_references(server):
    ctx = SourceContext(tokenizer=None, references=lambda ps: [f"ref-{p}" for p in ps])
    (source,) = build_sources(f"rm={server}/score", "", ctx)
    terms = combine([source], rollout_of(["a", "b"], ["xx", "yyyy"]))
    assert terms.raw.tolist() == [2.0, 4.0]
    assert Scorer.bodies[-1] == {"prompts": ["a", "b"], "completions": ["xx", "yyyy"],
                                 "references": ["ref-a", "ref-b"]}
    (listed,) = build_sources(f"{server}/list#batch=1", "", ctx)
    before = len(Scorer.bodies)
    assert combine([listed], rollout_of(["a", "b"], ["x", "yyy"])).raw.tolist() == [1.0, 3.0]
    assert len(Scorer.bodies) - before == 2  # batch=1: one request per completion


def test_a_remote_scorer_is_retried_refused_and_timed_out_with_clear_errors(server):
    ctx = SourceContext(tokenizer=None)
    r = rollout_of(["a"], ["xyz"])
    (flaky,) = build_sources(f"{server}/flaky#retries=2&backoff=0.01", "", ctx)
    assert combine([flaky], r).raw.tolist() == [3.0]  # two 503s, then an answer
    (bad,) = build_sources(f"{server}/bad#retries=3", "", ctx)
    with pytest.raises(RewardFunctionError, match=r"/bad answered HTTP 400: .*no completions"):
        bad.fn(r)
    assert Scorer.calls["/bad"] == 1  # a 400 is not retried
    (slow,) = build_sources(f"{server}/slow#timeout=0.2&retries=1&backoff=0.01", "", ctx)
    with pytest.raises(RewardFunctionError, match=r"/slow failed 2 time\(s\) \(timeout 0.2 s\)"):
        slow.fn(r)
    (down,) = build_sources("http://127.0.0.1:9/score#retries=0", "", ctx)
    with pytest.raises(RewardFunctionError, match="127.0.0.1:9/score failed 1 time"):
        down.fn(r)
    with pytest.raises(PluginError, match="unknown option 'tries'"):
        build_sources(f"{server}/score#tries=3", "", ctx)
