"""The independent judge in the evaluation: length-controlled gains on synthetic data with known answers, scorer
and rater agreement, gains under a tiny judge beside the training reward model, the n/a note without a judge, and
the over-optimisation figure from an overopt.jsonl fixture."""
import json

import numpy as np
import pytest

from rlhflab.config import EvalConfig, build_config
from rlhflab.errors import UserError
from rlhflab.measure import stats
from rlhflab.store.ratings import CRITERIA, RatingsStore, preference_pairs


def _synthetic(n=300, slope=0.05, true_gain=0.0, extra_tokens=20.0, seed=0):
    """Paired base/policy scores per prompt: score = prompt effect + slope·tokens + true_gain·[policy] + noise."""
    rng = np.random.default_rng(seed)
    prompt = rng.normal(0, 0.5, n)
    base_len = rng.integers(10, 60, n).astype(float)
    policy_len = rng.integers(10, 60, n) + extra_tokens
    base = prompt + slope * base_len + rng.normal(0, 0.2, n)
    policy = prompt + slope * policy_len + true_gain + rng.normal(0, 0.2, n)
    return policy, base, policy_len, base_len


def test_a_gain_made_of_length_is_controlled_away():
    policy, base, pl, bl = _synthetic(true_gain=0.0, extra_tokens=20)
    raw, raw_lo, _ = stats.paired_bootstrap_diff(policy, base, samples=500)
    assert raw == pytest.approx(1.0, abs=0.15) and raw_lo > 0.7, "the raw gain is the 20 extra tokens × 0.05"
    gain, lo, hi, slope = stats.length_controlled_gain(policy, base, pl, bl, samples=500, seed=1)
    assert slope == pytest.approx(0.05, abs=0.005)
    assert abs(gain) < 0.1 and lo < 0 < hi


@pytest.mark.parametrize("extra_tokens", [0.0, 20.0])
def test_a_real_gain_survives_length_control(extra_tokens):
    policy, base, pl, bl = _synthetic(true_gain=0.5, extra_tokens=extra_tokens, seed=2)
    gain, lo, hi, slope = stats.length_controlled_gain(policy, base, pl, bl, samples=500, seed=1)
    assert gain == pytest.approx(0.5, abs=0.1) and lo > 0.25 and lo < 0.5 < hi
    raw = stats.paired_bootstrap_diff(policy, base, samples=200)[0]
    assert raw == pytest.approx(0.5 + 0.05 * extra_tokens, abs=0.15)


def test_length_control_without_length_variation():
    same = [10.0] * 5
    gain, lo, hi, slope = stats.length_controlled_gain([2, 3, 4, 5, 6], [1, 2, 3, 4, 5], same, same, samples=100)
    assert gain == pytest.approx(1.0) and [lo, hi] == pytest.approx([1.0, 1.0])
    assert slope != slope, "no length to control for: the raw gain, slope nan"
    gain, *_ = stats.length_controlled_gain([2, 3], [1, 2], [20, 20], [10, 10], samples=100)
    assert gain != gain, "length and policy cannot be told apart"
    with pytest.raises(ValueError, match="paired"):
        stats.length_controlled_gain([1, 2], [1], [1, 2], [1, 2])


def test_order_agreement_counts_pairs_both_order():
    a = stats.order_agreement([2, 2, 1, 5, 3], [1, 1, 2, 5, 1], [9, 0, 0, 1, 3], [1, 1, 1, 0, 3])
    # pair 0 agrees, 1 disagrees, 2 agrees, 3 and 4 tied under one scorer: left out
    assert (a["agree"], a["n"]) == (2, 3)
    assert a["rate"] == pytest.approx(list(stats.wilson_interval(2, 3)))


def test_preference_pairs_from_blind_ratings(tmp_path):
    store = RatingsStore(tmp_path / "r.sqlite")
    store.replace_items([{"prompt_index": 0, "prompt": "p", "policy": pol, "response": f"answer {pol}"}
                         for pol in ("base", "full", "lora")])
    ids = {r["policy"]: r["item_id"] for r in store.items()}
    store.add_ratings([(ids["base"], dict.fromkeys(CRITERIA, 2)), (ids["full"], dict.fromkeys(CRITERIA, 4)),
                       (ids["lora"], dict.fromkeys(CRITERIA, 2))], rater="ann")
    store.add_ratings([(ids["base"], dict.fromkeys(CRITERIA, 5))], rater="bob")  # one answer: no comparison
    pairs, ties = preference_pairs(store.ratings())
    assert ties == 1 and len(pairs) == 2
    assert {p["preferred"] for p in pairs} == {"answer full"} and {p["other"] for p in pairs} == {"answer base",
                                                                                                  "answer lora"}


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory, tiny_llama_dir):
    """A second tiny reward model with its own seed: the judge."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(5)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    out = tmp_path_factory.mktemp("tiny-judge")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    (out / "reward_eval.json").write_text(json.dumps({"n_pairs": 64, "accuracy": [0.7, 0.58, 0.8]}))
    return out


def _cfg(tmp_path, base, reward, full, judge, **kw):
    values = dict(base_model=str(base), reward_model=str(reward), judge_model=str(judge), full_model=str(full),
                  policies="base,full", best_of_n="2", num_prompts=4, num_rating_prompts=2, max_new_tokens=6,
                  batch_size=4, bootstrap_samples=200, output_dir=str(tmp_path / "eval"),
                  ratings_db=str(tmp_path / "eval" / "ratings.sqlite"))
    values.update(kw)
    return build_config(EvalConfig, "demo", **values)


def test_evaluation_reports_gains_under_the_judge(tmp_path, tiny_llama_dir, tiny_reward_dir, tiny_judge_dir, full_run):
    from rlhflab.measure.evaluation import run_evaluation
    from rlhflab.measure.scoring import score_responses
    from rlhflab.models.loading import load_reward_model

    cfg = _cfg(tmp_path, tiny_llama_dir, tiny_reward_dir, full_run, tiny_judge_dir)
    store = RatingsStore(cfg.ratings_db)  # a rater preferred one of two answers in an earlier round
    store.replace_items([{"prompt_index": 0, "prompt": "Name a fruit.", "policy": pol, "response": text}
                         for pol, text in (("base", "A banana."), ("full", "Fruit fruit fruit."))])
    ids = {r["policy"]: r["item_id"] for r in store.items()}
    store.add_ratings([(ids["base"], dict.fromkeys(CRITERIA, 5)), (ids["full"], dict.fromkeys(CRITERIA, 1))], "ann")

    out = run_evaluation(cfg, progress=lambda *_: None)
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["available"] and results["judge"]["accuracy"] == [0.7, 0.58, 0.8]
    per_prompt = results["per_prompt"]
    for name in ("full", "best-of-2"):
        e = results["policies"][name]
        j = np.array(per_prompt[name]["judge"]) - np.array(per_prompt["base"]["judge"])
        assert e["judge_gain_vs_base"][0] == pytest.approx(j.mean(), abs=1e-3)
        assert e["judge_gain_vs_base"][1] <= e["judge_gain_vs_base"][0] <= e["judge_gain_vs_base"][2]
        for prefix, scorer in (("judge_", "judge"), ("", "reward")):  # recounted from the per-prompt scores
            mine, base = np.array(per_prompt[name][scorer]), np.array(per_prompt["base"][scorer])
            assert e[f"{prefix}wins_ties_losses_vs_base"] == [int((mine > base).sum()), int((mine == base).sum()),
                                                              int((mine < base).sum())]
        assert set(e["length_controlled"]) == {"reward_model", "judge"}
        assert e["length_controlled_scorer"] == "judge"
        assert e["length_controlled_gain_vs_base"] == e["length_controlled"]["judge"]["gain"]
    # the judge's column holds the judge model's scores of the very responses (not the reward model's)
    from rlhflab.models.precision import autocast
    from rlhflab.models.prompts import with_system

    assert cfg.system_prompt  # the demo asks with a system message, and the judge scores the prompt as asked
    judge_model, judge_tok = load_reward_model(str(tiny_judge_dir))
    with autocast(cfg.bf16):
        rescored = score_responses(judge_model, judge_tok,
                                   [with_system(ex["prompt"], cfg.system_prompt) for ex in results["examples"]],
                                   [ex["base"] for ex in results["examples"]])
    assert per_prompt["base"]["judge"][:len(rescored)] == pytest.approx(rescored, abs=2e-3)
    assert [ex["base_judge"] for ex in results["examples"]] == pytest.approx(rescored, abs=2e-3)

    raters = results["agreement"]["raters"]
    assert raters["comparisons"] == 1 and set(raters) >= {"reward_model", "judge"}
    for key, path in (("reward_model", tiny_reward_dir), ("judge", tiny_judge_dir)):
        model, tok = load_reward_model(str(path))
        good, bad = score_responses(model, tok, ["Name a fruit."] * 2, ["A banana.", "Fruit fruit fruit."])
        assert raters[key]["agree"] == int(good > bad) and raters[key]["n"] == 1
    pair = results["agreement"]["reward_model_vs_judge"]
    names = list(results["policies"])
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    col = lambda who, scorer: np.concatenate([per_prompt[p[who]][scorer] for p in pairs])  # noqa: E731
    rm_order, judge_order = np.sign(col(0, "reward") - col(1, "reward")), np.sign(col(0, "judge") - col(1, "judge"))
    ordered = (rm_order != 0) & (judge_order != 0)
    assert (pair["agree"], pair["n"]) == (int((rm_order == judge_order)[ordered].sum()), int(ordered.sum()))
    ind = results["judge_independence"]
    assert ind["policies"] == ["base", "full"] and ind["outputs"] == 8, "best-of-n left out"
    r = np.corrcoef(np.concatenate([per_prompt[n]["reward"] for n in ("base", "full")]),
                    np.concatenate([per_prompt[n]["judge"] for n in ("base", "full")]))[0, 1]
    assert ind["pearson"][0] == pytest.approx(r, abs=2e-3)
    assert ind["name"] in ("judge", "second reward model") and ind["test_pairs"] is None

    report = (out / "report.md").read_text()
    assert "judge gain vs base" in report and "length-controlled gain" in report
    assert "its judge gain is the honest number" in report and "Training RM vs judge" in report
    assert "70.0 % [58.0, 80.0]" in report, "the judge's held-out accuracy"
    assert "## Judge independence" in report and "after regressing out response length" in report
    assert "**Test pairs**: not compared" in report, "the tiny judge's reward_eval.json has no per-pair scores"
    assert "/tmp" not in report and str(tmp_path) not in report, "checkpoints by store name, no local paths"
    assert results["reward_model"]["model"] == tiny_reward_dir.name and results["judge"]["model"] == tiny_judge_dir.name
    assert (out / "figures" / "reward_kl_frontier.json").is_file()


def test_a_missing_judge_is_a_note_not_a_crash(tmp_path, tiny_llama_dir, tiny_reward_dir, full_run):
    from rlhflab.measure.evaluation import NO_JUDGE, run_evaluation

    cfg = _cfg(tmp_path, tiny_llama_dir, tiny_reward_dir, full_run, tmp_path / "no-judge-here", best_of_n="")
    out = run_evaluation(cfg, progress=lambda *_: None)
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["available"] is False and "no judge at" in results["judge"]["note"]
    full = results["policies"]["full"]
    assert "judge_gain_vs_base" not in full and full["length_controlled_scorer"] == "reward model"
    report = (out / "report.md").read_text()
    assert NO_JUDGE in report and "**No judge**" in report and "n/a (no judge)" in report
    assert "no ratings yet" in report
    assert len([line for line in report.splitlines() if "No judge" in line]) == 1, "said once, in one line"


def test_the_training_reward_model_cannot_be_its_own_judge(tiny_reward_dir):
    from rlhflab.measure.evaluation import load_judge

    cfg = build_config(EvalConfig, "demo", reward_model=str(tiny_reward_dir), judge_model=str(tiny_reward_dir))
    with pytest.raises(UserError, match="is the training reward model"):
        load_judge(cfg)


def _results(judge: dict | None) -> dict:
    full = {"reward_mean": [0.4, 0.2, 0.6], "gain_vs_base": [0.3, 0.1, 0.5], "win_rate_vs_base": [0.7, 0.5, 0.9],
            "wins_ties_losses_vs_base": [6, 2, 2], "n": 10, "length_gain_vs_base": [4.0, 1.0, 7.0],
            "length_controlled_gain_vs_base": [0.1, -0.05, 0.25], "length_controlled_scorer": "judge"}
    if judge and judge.get("available"):
        full.update(judge_gain_vs_base=[-0.2, -0.4, -0.01], judge_win_rate_vs_base=[0.35, 0.2, 0.5],
                    judge_wins_ties_losses_vs_base=[3, 1, 6])
    results = {"policies": {"base": {"reward_mean": [0.1, -0.1, 0.3], "n": 10}, "full": full}}
    if judge is not None:
        results["judge"] = judge
    return results


def test_results_table_shows_both_scorers_side_by_side():
    from rlhflab.measure.evaluation import NO_JUDGE, policy_results_table

    table = policy_results_table(_results({"model": "j", "available": True}))
    assert "judge gain vs base" in table and "training-RM gain vs base" in table
    full_row = next(line for line in table.splitlines() if line.startswith("| full |"))
    assert "+0.300 [+0.100, +0.500]" in full_row and "-0.200 [-0.400, -0.010]" in full_row
    assert "70.0 % [50.0, 90.0] (6/2/2)" in full_row and "35.0 % [20.0, 50.0] (3/1/6)" in full_row
    assert "+0.100 [-0.050, +0.250] (judge)" in full_row
    assert "length change (tokens)" in table and "+4.0 [+1.0, +7.0]" in table
    missing = policy_results_table(_results({"model": "j", "available": False, "note": "no judge at j"}))
    assert NO_JUDGE in next(line for line in missing.splitlines() if line.startswith("| full |"))
    old = policy_results_table(_results(None))  # results.json written before the judge: no n/a claim, no crash
    assert NO_JUDGE not in old and "| full |" in old


OVEROPT = [{"step": s, "episode": 8 * s, "n_prompts": 16, "kl_exact_per_token": kl, "kl_exact_ci": [kl * 0.8, kl * 1.2],
            "rm_score_mean": rm, "rm_score_ci": [rm - 0.1, rm + 0.1], "judge_score_mean": j,
            "judge_score_ci": None if j is None else [j - 0.2, j + 0.2], "response_tokens_mean": 30.0,
            "temperature": 0.7, "judge_model": "judge", "reward_model": "reward"}
           for s, kl, rm, j in ((0, 0.0, 1.0, 0.5), (4, 0.03, 1.5, 0.7), (8, 0.08, 2.0, 0.4), (12, 0.15, 2.4, None))]


def test_overoptimisation_figure_draws_rm_and_judge_against_kl():
    from rlhflab.measure.plots import overoptimisation_figure

    fig = json.loads(overoptimisation_figure({"ppo-full": OVEROPT, "grpo": [{"step": 1}]}).to_json())
    traces = {t["name"]: t for t in fig["data"]}
    assert set(traces) == {"ppo-full training RM", "ppo-full judge"}, "a run without usable checks draws nothing"
    rm, judge = traces["ppo-full training RM"], traces["ppo-full judge"]
    assert rm["x"] == [0.0, 0.03, 0.08, 0.15] and rm["y"] == [1.0, 1.5, 2.0, 2.4]
    assert judge["x"] == [0.0, 0.03, 0.08] and judge["y"] == [0.5, 0.7, 0.4], "checks without a judge score skipped"
    assert judge["line"]["dash"] == "dash" and rm["line"].get("dash") in (None, "solid")
    assert judge["error_y"]["array"] == pytest.approx([0.2] * 3)
    assert rm["error_x"]["arrayminus"][2] == pytest.approx(0.016)
    assert "nats / token" in json.dumps(fig["layout"])
