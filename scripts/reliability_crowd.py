"""A simulated crowd with known flip rates: does --weight-by reliability help the reward model?

For each seed:

1. Items: short reviews built from positive, negative and neutral words; each item pairs two
   reviews of one thing whose VADER sentiment (the gold scorer) differs. 5% are honeypots
   whose gold answer is the gold scorer's.
2. A crowd of simulated labelers (``SimulatedLabeler("sentiment", temperature=0.02,
   flip_rate=f)``) with known flip rates labels them in the store, three per item, each
   annotator taking the next item in turn from the same queue the app uses.
3. ``estimate_reliability`` on the export (with the honeypots): estimated vs true flip rates.
4. Reward models (a tiny random model with the default model's tokenizer, or any --model)
   trained from the store three ways: unweighted; ``--weight-by reliability``; and with
   ``--min-reliability 0.75`` too. All are scored on held-out gold pairs (new prompts, chosen
   = the higher gold score).

    python scripts/reliability_crowd.py --out runs/reliability-crowd --seeds 0 1 2

Writes ``results.json`` and prints the tables docs/feedback.md shows.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

CROWD = {"good-1": 0.0, "good-2": 0.05, "good-3": 0.1, "good-4": 0.1,
         "noisy-1": 0.3, "noisy-2": 0.35, "adversary-1": 0.8, "adversary-2": 0.9}
THINGS = ["film", "hotel", "phone", "meal", "book", "concert", "car", "game", "jacket", "museum",
          "course", "laptop", "bakery", "train ride", "podcast", "museum tour"]
GOOD = ["wonderful", "excellent", "delightful", "superb", "lovely", "great", "fantastic", "charming",
        "brilliant", "pleasant", "amazing", "enjoyable"]
BAD = ["terrible", "awful", "boring", "horrible", "dreadful", "disappointing", "ugly", "miserable",
       "annoying", "painful", "poor", "dull"]
PLAIN = ["long", "short", "new", "old", "large", "small", "quiet", "busy", "cheap", "expensive"]
TEMPLATES = ["The {t} was {a}.", "A {a} {t}, and {b} too.", "Honestly, the {t} felt {a} and {b}.",
             "I found the {t} {a}.", "What a {a} {t}; {b} overall."]


def review(rng: random.Random, thing: str) -> str:
    words = rng.sample(GOOD + BAD + PLAIN, 2)
    return rng.choice(TEMPLATES).format(t=thing, a=words[0], b=words[1])


def make_pairs(rng: random.Random, scorer, n: int) -> list[dict]:
    """``n`` items: a prompt and two reviews whose gold sentiment differs by at least 0.1."""
    out = []
    while len(out) < n:
        thing = rng.choice(THINGS)
        prompt = f"Write a one-line review of the {thing} (#{len(out)})."
        a, b = review(rng, thing), review(rng, thing)
        sa, sb = scorer([prompt, prompt], [a, b])
        if a != b and abs(sa - sb) >= 0.1:
            out.append({"prompt": prompt, "responses": [a, b], "gold_scores": [sa, sb]})
    return out


def label_crowd(store, project: str, seed: int) -> None:
    """Every annotator takes and answers one item at a time, in random turns, until none is left."""
    from rlhfkit.feedback import questions as Q
    from rlhfkit.feedback.simulated import SimulatedLabeler

    rng = random.Random(seed)
    users = {who: store.create_user(who, "crowd-password", source="simulated") for who in CROWD}
    labelers = {who: SimulatedLabeler("sentiment", temperature=0.02, flip_rate=f, seed=seed * 100 + i,
                                      name=who) for i, (who, f) in enumerate(CROWD.items())}
    active = set(CROWD)
    while active:
        who = rng.choice(sorted(active))
        task = store.next_task(users[who], project)
        if task is None:
            active.discard(who)
            continue
        answer = Q.get("pairwise").simulate(labelers[who], task.to_json(), None)
        store.submit(users[who], project, task.item_id, {"pairwise": answer}, task.submission_key)


def run_seed(seed: int, args, out: Path, tiny: Path | None) -> dict:
    from rlhfkit.data import records as R
    from rlhfkit.data.io import write_records
    from rlhfkit.feedback.reliability import estimate_reliability
    from rlhfkit.feedback.store import Store
    from rlhfkit.feedback.transfer import project_records
    from rlhfkit.rewards.gold import get_scorer
    from rlhfkit.train.rm import RMConfig, train_rm

    rng = random.Random(seed)
    scorer = get_scorer("sentiment")
    folder = out / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(rng, scorer, args.items + args.eval_items)
    train_pairs, eval_pairs = pairs[:args.items], pairs[args.items:]
    n_gold = max(1, args.items // 20)
    items = [{"prompt": p["prompt"], "responses": p["responses"]} for p in train_pairs[n_gold:]]
    items += [{"prompt": p["prompt"], "responses": p["responses"],
               "gold": {"pairwise": {"choice": 0 if p["gold_scores"][0] > p["gold_scores"][1] else 1}}}
              for p in train_pairs[:n_gold]]
    db = folder / "crowd.db"
    db.unlink(missing_ok=True)
    store = Store(f"sqlite:///{db}")
    store.create_project("crowd", ["pairwise"], overlap=3, gold_every=10, items=items)
    label_crowd(store, "crowd", seed)
    records = project_records(store, "crowd", include_gold=True)
    store.close()
    estimates = estimate_reliability(records)
    eval_file = folder / "gold-eval.jsonl"
    write_records([R.Comparison(prompt=p["prompt"], chosen=max(zip(p["gold_scores"], p["responses"]))[1],
                                rejected=min(zip(p["gold_scores"], p["responses"]))[1]) for p in eval_pairs],
                  eval_file)
    result = {"seed": seed, "labels": sum(1 for r in records if not r.meta.get("gold")),
              "honeypot_labels": sum(1 for r in records if r.meta.get("gold")),
              "flip": {who: {"true": f, "drawn": _drawn_flip(records, who),
                             "estimated": round(estimates[who]["preference"].error_rate, 4)}
                       for who, f in CROWD.items()}, "rm": {}}
    variants = {"unweighted": {}, "weighted": {"weight_by": "reliability"},
                "weighted + min 0.75": {"weight_by": "reliability", "min_reliability": 0.75}}
    for name, extra in variants.items():
        run_dir = folder / ("rm-" + name.replace(" ", "").replace("+", "-").replace(".", ""))
        cfg = RMConfig(model=str(tiny) if tiny else args.model, data=f"db:sqlite:///{db}?project=crowd",
                       eval_data=str(eval_file), output_dir=str(run_dir), epochs=args.epochs,
                       batch_size=8, learning_rate=args.lr, warmup_ratio=0.05, max_length=64,
                       eval_every=0, progress=False, precision="fp32", seed=seed, **extra)
        t0 = time.time()
        train_rm(cfg)
        acc = json.loads((run_dir / "eval.json").read_text())["eval/rm_accuracy"]
        result["rm"][name] = {"gold_accuracy": round(acc, 4), "seconds": round(time.time() - t0, 1)}
        print(f"seed {seed} {name}: held-out gold accuracy {acc:.3f}", flush=True)
    return result


def _drawn_flip(records, who: str) -> float | None:
    """The share of this annotator's non-tie labels whose choice went against the gold scorer.

    Read from the SimulatedLabeler's own ``flipped`` flag is not possible through the store, so
    it is recomputed: a label is against gold when the chosen response has the lower VADER score.
    """
    from rlhfkit.rewards.gold import get_scorer

    scorer = get_scorer("sentiment")
    mine = [r for r in records if r.annotator == who and not r.tie]
    if not mine:
        return None
    chosen = scorer([r.prompt for r in mine], [r.chosen for r in mine])
    rejected = scorer([r.prompt for r in mine], [r.rejected for r in mine])
    return round(sum(c < j for c, j in zip(chosen, rejected)) / len(mine), 4)


def summarize(results: list[dict]) -> str:
    lines = ["| annotator | true flip rate | against gold (drawn) | estimated error rate |", "|---|---|---|---|"]
    for who, f in CROWD.items():
        drawn = [r["flip"][who]["drawn"] for r in results]
        est = [r["flip"][who]["estimated"] for r in results]
        lines.append(f"| {who} | {f:.2f} | {_ms(drawn)} | {_ms(est)} |")
    lines += ["", "| reward model | held-out gold accuracy (mean ± sd over seeds) | per seed |", "|---|---|---|"]
    for name in results[0]["rm"]:
        accs = [r["rm"][name]["gold_accuracy"] for r in results]
        lines.append(f"| {name} | {_ms(accs, 3)} | {', '.join(f'{a:.3f}' for a in accs)} |")
    return "\n".join(lines)


def _ms(values, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/reliability-crowd")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--items", type=int, default=600, help="items to label (5%% honeypots)")
    ap.add_argument("--eval-items", type=int, default=300, help="held-out gold pairs")
    ap.add_argument("--model", default="tiny", help="tiny (random, 2 layers x 64) or a model spec")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = None
    if args.model == "tiny":
        from rlhfkit.models.loading import load_tokenizer
        from rlhfkit.testing import make_tiny_lm

        tiny = make_tiny_lm(out / "tiny-lm", load_tokenizer("smollm2-135m"))
    results = [run_seed(seed, args, out, tiny) for seed in args.seeds]
    (out / "results.json").write_text(json.dumps({"args": vars(args), "crowd": CROWD,
                                                  "results": results}, indent=2))
    print(summarize(results))


if __name__ == "__main__":
    main()
