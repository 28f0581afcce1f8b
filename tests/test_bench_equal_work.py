"""The equal-work benches (bench/bench_ppo.py, bench/bench_reward.py) and their rows in BENCHMARKS.md's table: plain
TRL and train_ppo time the same steps on a tiny model; each row names both sides' work, its spread and its effect."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from report import render_table

WHERE = {"command": "python bench/run_all.py --only ppo", "machine": "Test CPU, 2 cores", "measured": "2026-11-23T10:00+00:00"}


def _steps(median, lo, hi, n=3):
    return {"n": n, "median": median, "min": lo, "max": hi, "q1": lo, "q3": hi, "values": [lo, median, hi]}


def test_equal_work_and_less_work_rows_name_both_sides_with_spread_and_effect():
    ppo = {**WHERE, "equal_work": {
        "work": "full, 8 rollouts x 32 tokens, bf16 autocast", "baseline": "plain TRL 1.12 PPOTrainer",
        "baseline_steps": _steps(12.0, 11.5, 12.6), "ours": "rlhflab train_ppo, probe off",
        "ours_steps": _steps(10.0, 9.8, 10.4), "ours_save_s_per_save": _steps(0.8, 0.7, 0.9), "ours_saves": 3,
        "speedup": 1.2},
        "less_work": [{"factor": "bf16 autocast (ours) vs fp32", "without_label": "fp32", "with_label": "bf16",
                       "without_steps": _steps(15.0, 14.0, 16.0), "with_steps": _steps(10.0, 9.8, 10.4),
                       "speedup": 1.5, "effect": "max |Δ log-prob| 0.02 nats"}]}
    reward = {**WHERE, "equal_work": {
        "work": "64 pairs x 1 epoch", "baseline": "plain transformers Trainer",
        "baseline_run": {"steps": _steps(2.0, 1.9, 2.2), "test_accuracy": [0.6, 0.48, 0.71]},
        "ours": "rlhflab train_reward_model", "ours_run": {"steps": _steps(2.1, 2.0, 2.3), "test_accuracy": [0.6, 0.48, 0.71]},
        "speedup": 0.95},
        "less_work": [{"factor": "cached frozen prefix", "without_label": "recomputed", "with_label": "cached",
                       "without": {"steps": _steps(2.1, 2.0, 2.3), "pairs_per_s": 3.5},
                       "with": {"steps": _steps(0.5, 0.4, 0.6), "pairs_per_s": 9.0}, "speedup": 9.0 / 3.5,
                       "effect": "test accuracy 60.0 % vs 60.0 %"}]}
    table = render_table({"ppo": ppo, "reward": reward}).splitlines()
    equal = next(line for line in table if line.startswith("| PPO step, equal work"))
    assert "plain TRL 1.12 PPOTrainer: 12.00 [11.50–12.60] (n = 3)" in equal
    assert "rlhflab train_ppo, probe off: 10.00 [9.80–10.40]" in equal and "3 resumable work-state saves" in equal
    assert "**1.20×**" in equal and "2×: **not met**" in equal and "2026-11-23 10:00" in equal
    bf16 = next(line for line in table if "less work: bf16" in line)
    assert "fp32: 15.00" in bf16 and "**1.50×**" in bf16 and "effect: max \\|Δ log-prob\\| 0.02 nats" in bf16
    rm = next(line for line in table if line.startswith("| reward-model training, equal work"))
    assert "plain transformers Trainer: 2.00 [1.90–2.20]" in rm and "test accuracy 60.0 % [48.0, 71.0]" in rm
    cached = next(line for line in table if "less work: cached frozen prefix" in line)
    assert "3.50 pairs/s" in cached and "9.00 pairs/s" in cached and "**2.57×**" in cached


def test_app_decode_and_engine_batch_rows_from_the_generation_record():
    generation = {**WHERE, "decode_batch1": {"bandwidth_gb_s": 32.0, "app_default": {
        "dtype": "bfloat16", "engine": "static", "generate_tok_s": 24.0, "engine_tok_s": 72.0, "speedup": 3.0,
        "greedy_equals_generate": True, "bytes_per_token_mb": 269.0, "bandwidth_limit_tok_s": 119.0,
        "fraction_of_limit": 0.605, "load_s": 1.5, "time_to_first_token_after_load_s": 0.3}},
        "engine_batches": {"dtype": "bfloat16", "engine": "static", "rows": [
            {"batch": 8, "new_tokens": 32, "tok_s": 200.0}, {"batch": 1, "new_tokens": 32, "tok_s": 50.0}]}}
    table = render_table({"generation": generation}).splitlines()
    app = next(line for line in table if line.startswith("| chat decode, app default path (bfloat16)"))
    assert "`generate()` bfloat16: 24.0" in app and "**3.00×**" in app and "60 % of the bandwidth limit" in app
    assert "2× and 60 %: met" in app and "first token < 0.5 s: met" in app and "after load 0.30 s" in app
    batches = next(line for line in table if line.startswith("| decode engine tokens/s at batch 1/8"))
    assert "1: 50, 8: 200" in batches and "**4.00×**" in batches


def test_plain_trl_and_train_ppo_time_the_same_steps_on_a_tiny_model(tiny_llama_dir, tiny_reward_dir, prompts_file):
    import bench_ppo

    overrides = dict(base_model=str(tiny_llama_dir), reward_model=str(tiny_reward_dir), dataset=prompts_file, lang=None,
                     num_prompts=16, num_heldout=4, batch_size=4, mini_batch_size=4, max_response_length=8,
                     judge_model="", bf16=False)
    result = bench_ppo.run(steps=2, variants=[], overrides=overrides)
    e = result["equal_work"]
    for side in ("baseline_steps", "ours_steps"):
        assert e[side]["n"] == 1 and len(e[side]["all_s"]) == 2  # one warm-up step, one timed
    assert abs(e["speedup"] - e["baseline_steps"]["median"] / e["ours_steps"]["median"]) < 1e-12
    assert result["precision"] == "fp32" and "fp32" in result["benchmark"]
    # the same value-model work on both sides: the demo's frozen blocks and zero head give one trainable head
    assert len(e["baseline_results"]["value_loss"]) == len(e["ours_results"]["value_loss"]) == 2
    assert abs(e["ours_results"]["kl_exact_per_token"][0]) < 1e-5  # step 1 rolls out before any update (fp32 rounding)


def test_plain_trl_grpo_and_train_grpo_time_the_same_steps_on_a_tiny_model(tiny_llama_dir, tiny_reward_dir,
                                                                          prompts_file):
    import bench_grpo

    overrides = dict(base_model=str(tiny_llama_dir), reward_model=str(tiny_reward_dir), dataset=prompts_file, lang=None,
                     num_prompts=16, num_heldout=4, batch_size=2, num_generations=2, max_response_length=8,
                     judge_model="", bf16=False)
    result = bench_grpo.run(steps=2, overrides=overrides)
    e = result["equal_work"]
    for side in ("baseline_steps", "ours_steps"):
        assert e[side]["n"] == 1 and len(e[side]["all_s"]) == 2  # one warm-up step, one timed
    assert abs(e["speedup"] - e["baseline_steps"]["median"] / e["ours_steps"]["median"]) < 1e-12
    assert result["precision"] == "fp32" and "2 prompts x 2 responses x 8 tokens" in result["benchmark"]
    assert len(e["ours_scores"]) == 2 and all(isinstance(s, float) for s in e["ours_scores"])


def test_rollouts_row_samples_with_generate_and_measures_the_engine_against_the_forward(tiny_llama_dir,
                                                                                         tiny_reward_dir, prompts_file):
    """The one factor of the "rollouts" row: inside generate_rollouts train_ppo samples with generate() (never the
    engine); the engine's step measured against the forward pass is exact in fp32, close under bf16."""
    import bench_ppo
    import torch

    import rlhflab.training.online as online
    from rlhflab.generation import sampling as generation

    overrides = dict(base_model=str(tiny_llama_dir), reward_model=str(tiny_reward_dir), dataset=prompts_file, lang=None,
                     num_prompts=16, num_heldout=4, batch_size=4, mini_batch_size=2, max_response_length=8,
                     judge_model="", bf16=False, probe_every=0)
    engine_calls = []
    original = generation.decode_batch
    generation.decode_batch = lambda *a, **kw: engine_calls.append(1) or original(*a, **kw)
    try:
        with bench_ppo.generate_rollouts(chunk=2):
            assert online.sample_responses is not generation.sample_responses
            run = bench_ppo.ours(2, **overrides)
    finally:
        generation.decode_batch = original
    assert online.sample_responses is generation.sample_responses and not engine_calls
    assert len(run["results"]["score"]) == 2
    exact = bench_ppo.sampler_vs_forward_kl(prompts=4, **overrides)
    assert exact["engine"] == "llama" and exact["tokens"] > 0
    assert abs(exact["kl_exact_engine_forward_per_token"]) < 1e-6 and exact["max_abs_logprob_diff"] < 1e-4
    if torch.backends.mkldnn.is_available():
        packed = bench_ppo.sampler_vs_forward_kl(prompts=4, **{**overrides, "bf16": True})
        if packed["engine"] == "llama-packed-bf16":  # a CPU with fast bf16
            assert 0 < packed["max_abs_logprob_diff"] < 0.1 and packed["kl_exact_engine_forward_per_token"] < 1e-3
