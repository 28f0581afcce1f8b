"""The Evaluation tab's figure and names (issue 25, item 6): the reward–KL frontier with intervals both ways and
best-of-n drawn as a bound, and no local paths in what the report and the tab show."""
import json

import pytest

from rlhflab.measure.evaluation import display_name, strip_local_paths
from rlhflab.measure.plots import reward_kl_frontier_figure

RESULTS = {"policies": {
    "base": {"reward_mean": [0.1, -0.1, 0.3]},
    "full": {"gain_vs_base": [0.3, 0.1, 0.5], "judge_gain_vs_base": [0.2, -0.1, 0.4],
             "kl_per_token_to_base": [0.05, 0.03, 0.08]},
    "dpo": {"gain_vs_base": [0.1, 0.0, 0.2], "judge_gain_vs_base": [0.12, 0.03, 0.22],
            "kl_per_token_to_base": [0.006, 0.004, 0.009]},
    "best-of-4": {"gain_vs_base": [0.8, 0.6, 1.0], "judge_gain_vs_base": [0.7, 0.5, 0.9],
                  "kl_bound_per_sequence": 0.636, "kl_bound_per_token": 0.0135}}}


def test_the_frontier_plots_both_gains_against_kl_with_both_intervals():
    fig = json.loads(reward_kl_frontier_figure(RESULTS).to_json())
    traces = {t["name"]: t for t in fig["data"]}
    judge, rm = traces["judge gain"], traces["training-RM gain"]
    assert judge["text"] == ["full", "dpo"] and judge["x"] == [0.05, 0.006] and judge["y"] == [0.2, 0.12]
    assert judge["error_x"]["array"] == pytest.approx([0.03, 0.003]) and judge["error_x"]["arrayminus"] == \
        pytest.approx([0.02, 0.002])
    assert judge["error_y"]["arrayminus"] == pytest.approx([0.3, 0.09]) and rm["y"] == [0.3, 0.1]
    # best-of-4: a dashed segment from KL 0 to its bound, not a point among the measured ones
    bound = traces["best-of-4 judge gain (KL bound)"]
    assert bound["x"] == [0, 0.0135] and bound["y"] == [0.7, 0.7] and bound["line"]["dash"] == "dash"
    assert "best-of-4" not in judge["text"] and "KL ≤ 0.0135" in bound["text"][1]
    assert "exact KL to the base" in fig["layout"]["xaxis"]["title"]["text"]


def test_without_a_judge_the_frontier_says_so():
    no_judge = {"policies": {k: {f: v for f, v in e.items() if not f.startswith("judge")}
                             for k, e in RESULTS["policies"].items()}}
    fig = json.loads(reward_kl_frontier_figure(no_judge).to_json())
    assert "judge gain" not in {t["name"] for t in fig["data"]}
    assert "no judge" in fig["layout"]["title"]["text"]


def test_local_paths_become_store_names_or_repository_paths(monkeypatch, tmp_path):
    from rlhflab import config

    store = tmp_path / "store"
    monkeypatch.setattr(config, "CHECKPOINTS_DIR", store)
    assert display_name(str(store / "reward")) == "reward" and display_name(str(store / "eval" / "r.sqlite")) == \
        "eval/r.sqlite"
    assert display_name(str(config.REPO_ROOT / "data" / "demo" / "oasst1.jsonl")) == "data/demo/oasst1.jsonl"
    assert display_name("/somewhere/else/judge") == "judge" and display_name("openai-community/gpt2") == \
        "openai-community/gpt2"
    text = (f"model `{store}/ppo-full` from /elsewhere/x/prompts.jsonl; 0.1 nats / token, n/a, W/T/L 1/2/3, "
            f"https://huggingface.co/a/b and figures/kl.html")
    assert strip_local_paths(text) == ("model `ppo-full` from prompts.jsonl; 0.1 nats / token, n/a, W/T/L 1/2/3, "
                                       "https://huggingface.co/a/b and figures/kl.html")
    # arithmetic is not a path: the best-of-n bound kept its "/n" (the report once printed "log n − (n−1)n")
    assert strip_local_paths("bound: log n − (n−1)/n = 0.636") == "bound: log n − (n−1)/n = 0.636"
