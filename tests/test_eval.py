"""Evaluation: interval coverage, held-out discipline, KL of a policy to itself, rating aggregates, a tiny run."""
import json
from pathlib import Path

import numpy as np
import pytest

from rlhflab.config import EvalConfig, build_config
from rlhflab.errors import UserError
from rlhflab.measure import stats
from rlhflab.store.jsonio import read_jsonl
from rlhflab.store.ratings import CRITERIA, RatingsStore


def test_bootstrap_interval_covers_true_mean_at_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 200
    for t in range(trials):
        x = rng.exponential(scale=2.0, size=60)  # skewed, true mean 2.0
        _, lo, hi = stats.bootstrap_ci(x, samples=400, seed=t)
        hits += lo <= 2.0 <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_paired_bootstrap_and_wilson():
    a = np.arange(50, dtype=float)
    est, lo, hi = stats.paired_bootstrap_diff(a + 1.0, a, samples=200)
    assert est == lo == hi == 1.0  # a constant paired difference has no spread
    p, lo, hi = stats.wilson_interval(8, 10)
    assert p == 0.8 and lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)


def test_one_interval_format_for_reports_cards_and_the_app():
    from rlhflab.measure.ppo_metrics import format_gain

    assert stats.format_interval(0.4123, 0.3011, 0.5204) == "0.412 [0.301, 0.520]"
    assert stats.format_interval(0.11, -0.02, 0.24, signed=True) == "+0.110 [-0.020, +0.240]"
    assert stats.format_interval(0.72, 0.58, 0.83, 1, pct=True) == "72.0 % [58.0, 83.0]"
    assert stats.format_interval(25.3, 22, 28, 1, unit="tokens") == "25.3 tokens [22.0, 28.0]"
    gain = {"mean": 0.28, "low": 0.05, "high": 0.51, "n_prompts": 48}
    assert format_gain(gain) == "+0.280 [+0.050, +0.510] (n = 48 prompts)"


def test_kl_of_responses_is_each_response_scored_alone_in_the_given_order(tiny_llama_dir):
    """exact_kl_of_responses batches by length (left-padded prompts, right-padded responses, the LM head only at
    response positions) and returns each response's exact KL, token count and k1 in the order given: each must be
    that of the prompt + response scored alone at the temperature (a shifted position, a pad read as context or a
    row put back in the wrong place would change them), and two different models' k1 is not 0."""
    import contextlib

    import torch

    from rlhflab.measure.kl import exact_kl_of_responses
    from rlhflab.models.loading import load_causal_lm
    from rlhflab.models.prompts import format_prompt
    model, tok = load_causal_lm(str(tiny_llama_dir))
    other, _ = load_causal_lm(str(tiny_llama_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["Tell me a long story about a cat", "Hi there", "Why?"]
    responses = ["Once upon a time", "Hello, friend. How are you doing on this fine day?", "Because."]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    t = 0.7
    sums, counts, k1 = exact_kl_of_responses(lambda: contextlib.nullcontext(model),
                                             lambda: contextlib.nullcontext(other), tok, prompts, ids,
                                             temperature=t, batch_size=2, with_k1=True)

    def alone(m, prompt, resp):  # one unpadded sequence, log-softmax read by hand
        ctx = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = m(input_ids=torch.tensor([ctx + resp])).logits[0].float()
        return torch.log_softmax(logits[len(ctx) - 1:-1] / t, -1)

    for i, (p, r) in enumerate(zip(prompts, ids)):
        lp, lq = alone(model, p, r), alone(other, p, r)
        picked = torch.arange(len(r)), torch.tensor(r)
        assert counts[i] == len(r)
        assert sums[i] == pytest.approx(float((lp.exp() * (lp - lq)).sum()), abs=1e-4)
        assert k1[i] == pytest.approx(float((lp[picked] - lq[picked]).sum()), abs=1e-4) and abs(k1[i]) > 1e-3


def test_rating_aggregate_matches_hand_computed_means(tmp_path):
    store = RatingsStore(tmp_path / "r.sqlite")
    store.replace_items([{"prompt_index": i, "prompt": f"p{i}", "policy": pol, "response": f"{pol}{i}"}
                         for i in range(2) for pol in ("base", "full", "lora")])
    items = {(r["prompt_index"], r["policy"]): r["item_id"] for r in store.items()}
    fixture = [((0, "base"), [1, 2, 3, 4, 5]), ((1, "base"), [3, 2, 1, 2, 5]), ((0, "full"), [5, 5, 4, 4, 5]),
               ((0, "lora"), [2, 2, 2, 2, 2]), ((1, "lora"), [4, 4, 4, 4, 4]), ((1, "lora"), [3, 3, 3, 3, 1])]
    for key, scores in fixture:
        store.add_rating(items[key], dict(zip(CRITERIA, scores)), rater="t")
    agg = {r["policy"]: r for r in store.aggregate()}
    assert agg["base"]["n"] == 2 and agg["base"]["coherence"] == 2.0 and agg["base"]["helpfulness"] == 2.0
    assert agg["full"]["n"] == 1 and agg["full"]["harmlessness"] == 5.0
    assert agg["lora"]["n"] == 3 and agg["lora"]["coherence"] == pytest.approx(3.0)
    assert agg["lora"]["harmlessness"] == pytest.approx(7 / 3)
    csv = store.csv_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith("rating_id,created,rater,policy")
    with pytest.raises(UserError, match="coherence"):
        store.add_rating(items[(0, "base")], {**dict(zip(CRITERIA, [1] * 5)), "coherence": 6})
    task = store.blind_task("someone-new", seed=0)
    assert len(task["responses"]) == 3 and "policy" not in task["responses"][0]


def test_heldout_prompts_never_overlap_training(tmp_path):
    from rlhflab.data.oasst1 import save_prompts
    from rlhflab.measure.evaluation import heldout_prompts
    run = tmp_path / "ppo-full"
    run.mkdir()
    save_prompts(run / "train_prompts.jsonl", ["a", "b", "c"])
    save_prompts(run / "heldout_prompts.jsonl", ["d", "e"])
    cfg = build_config(EvalConfig, "demo", num_prompts=50)
    prompts, source = heldout_prompts(cfg, {"full": run})
    assert prompts == ["d", "e"] and source.endswith("heldout_prompts.jsonl")
    leaky = tmp_path / "leaky.jsonl"
    save_prompts(leaky, ["d", "b"])
    cfg = build_config(EvalConfig, "demo", prompts=str(leaky))
    with pytest.raises(UserError, match="used in PPO training"):
        heldout_prompts(cfg, {"full": run})


def test_tiny_end_to_end_evaluation(tmp_path, tiny_llama_dir, tiny_reward_dir, full_run, lora_run):
    from rlhflab.measure.evaluation import run_evaluation
    cfg = build_config(EvalConfig, "demo", base_model=str(tiny_llama_dir), reward_model=str(tiny_reward_dir),
                       full_model=str(full_run), lora_model=str(lora_run), num_prompts=4, num_rating_prompts=2,
                       max_new_tokens=6, batch_size=4, bootstrap_samples=200, output_dir=str(tmp_path / "eval"),
                       ratings_db=str(tmp_path / "eval" / "ratings.sqlite"),
                       judge_model=str(tmp_path / "no-judge"))  # tests/test_judge_eval.py runs one with a judge
    out = run_evaluation(cfg, progress=lambda *_: None)
    results = json.loads((out / "results.json").read_text())
    assert results["num_prompts"] == 4 and set(results["policies"]) == {"base", "full", "lora", "best-of-4"}
    bon = results["policies"]["best-of-4"]  # the demo profile's best-of-n row: no weights, a bound for its KL
    assert bon["kl_bound_per_sequence"] == pytest.approx(np.log(4) - 3 / 4) and "kl_per_token_to_base" not in bon
    assert 0 <= bon["cut_rate"] <= 1 and "gain_vs_base" in bon
    for name in ("full", "lora"):
        e = results["policies"][name]
        assert e["gain_vs_base"][1] <= e["gain_vs_base"][0] <= e["gain_vs_base"][2]
        assert 0 <= e["win_rate_vs_base"][0] <= 1 and "kl_per_token_to_base" in e
        # the run's own exact KL over its last window stands beside the evaluation's, from its metrics.jsonl
        run = {"full": full_run, "lora": lora_run}[name]
        logged = [r["kl_exact_per_token"] for r in read_jsonl(Path(run) / "metrics.jsonl")]
        assert e["kl_exact_per_token_training_last"] == pytest.approx(np.mean(logged[-1:]), abs=1e-9)
        # each prompt's KL sum and tokens are kept, and add up to the evaluation's point estimate
        kept = results["per_prompt"][name]
        assert len(kept["kl_exact_sum"]) == len(kept["kl_tokens"]) == 4
        assert sum(kept["kl_exact_sum"]) / sum(kept["kl_tokens"]) == pytest.approx(e["kl_per_token_to_base"][0],
                                                                                 rel=1e-4, abs=1e-6)
    base = results["policies"]["base"]
    rewards = results["per_prompt"]["base"]["reward"]
    assert base["reward_mean"][0] == pytest.approx(np.mean(rewards), abs=1e-3)
    report = (out / "report.md").read_text()
    assert "nats per token" in report and "95 % bootstrap" in report and "n prompts" in report
    assert "training log's exact KL, last pass" in report
    assert (out / "figures" / "kl_per_token.json").is_file()
    store = RatingsStore(cfg.ratings_db)
    assert len(store.items()) == 2 * 3


def test_ties_count_half_and_are_reported():
    w = stats.win_rate_with_ties([1, 1, 2, 0], [0, 1, 2, 1], samples=200)
    assert (w["wins"], w["ties"], w["losses"]) == (1, 2, 1)
    assert w["rate"][0] == pytest.approx(0.5)  # (1 + 0.5 * 2) / 4
    same = stats.win_rate_with_ties([3.0] * 10, [3.0] * 10, samples=200)
    assert same["rate"] == [0.5, 0.5, 0.5], "identical answers are no evidence either way"
