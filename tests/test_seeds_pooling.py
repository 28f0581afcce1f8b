"""The five-seed table's pooled intervals and Holm correction (bench/seeds.py; issue 25, item 4): known answers."""
import numpy as np
import pytest

import seeds


def _rows(means, half_width, key="judge_gain", method="m"):
    return [{"method": method, "seed": i, key: [m, m - half_width, m + half_width]} for i, m in enumerate(means)]


def test_seeds_that_agree_too_well_do_not_shrink_the_interval_below_their_own_error():
    """DPO's case: five seeds at +0.12 whose spread is far below each seed's own error. The t-interval across seeds
    excludes zero; pooled with each seed's error (SE 0.178 each) the interval is about ±1.96 · 0.178 / √5."""
    means = [0.24, 0.05, 0.12, 0.10, 0.11]
    g = seeds.pooled_gain(_rows(means, 0.35), "judge_gain")
    se_each = 0.35 / 1.959963984540054
    assert g["tau2"] == 0.0 and g["se"] == pytest.approx(se_each / np.sqrt(5))
    assert g["mean"] == pytest.approx(np.mean(means)) and g["low"] < 0 < g["high"]
    t_low = seeds.t_interval(means)[1]
    assert t_low > 0, "the t-interval across seeds alone excludes zero"


def test_spread_across_seeds_beyond_their_errors_widens_the_interval():
    tight = seeds.pooled_gain(_rows([0.1, 0.1, 0.1, 0.1], 0.02), "judge_gain")
    spread = seeds.pooled_gain(_rows([-0.5, 0.7, -0.3, 0.5], 0.02), "judge_gain")
    assert spread["tau2"] > 0.1 and spread["high"] - spread["low"] > 10 * (tight["high"] - tight["low"])
    assert spread["low"] < 0 < spread["high"]
    assert seeds.pooled_gain(_rows([0.1], 0.02), "judge_gain") is None


def test_holm_step_down():
    adjusted = seeds.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert seeds.holm({"x": 0.4, "y": 0.6}) == pytest.approx({"x": 0.8, "y": 0.8})


def test_the_pooled_table_corrects_over_the_trained_methods_only():
    records = (_rows([0.3, 0.32, 0.28, 0.31, 0.29], 0.1, method="good") + _rows([0.05] * 5, 0.3, method="flat")
               + _rows([0.8] * 5, 0.1, method="best-of-4"))
    for r in records:
        r["rm_gain"] = r["judge_gain"]
    text, real = seeds.pooled_table(records)
    assert real == ["good"] and "Holm-significant" in text
    assert "| best-of-4 | 5 |" in text and "not in the family" in text


def test_training_and_evaluation_kls_are_compared_within_their_intervals():
    agree = {"kl_training_last_exact": 0.060, "kl_training_last_exact_se": 0.005, "kl_exact_per_token": [0.055, 0.045, 0.065]}
    apart = {"kl_training_last_exact": 0.100, "kl_training_last_exact_se": 0.005, "kl_exact_per_token": [0.055, 0.045, 0.065]}
    assert seeds.kls_agree(agree) is True and seeds.kls_agree(apart) is False
    assert seeds.kls_agree({"kl_training_last_exact": 0.1, "kl_exact_per_token": [0.1, 0.09, 0.11]}) is None, \
        "records from before the training KL's interval was kept"
    rows = [{"method": "ppo-full", "seed": s, **agree, "judge_gain": [0.1, 0.0, 0.2], "rm_gain": [0.1, 0.0, 0.2],
             "kl_training_window": "last pass"} for s in range(2)]
    text, _ = seeds.table(rows)
    assert "agree with the evaluation's within intervals: 2/2" in text and "(last 3 steps)" not in text


def test_one_named_window_in_the_seeds_table():
    from rlhflab.measure.ppo_metrics import summarize_metrics

    metrics = [{"step": i, "pass": 1 + (i > 3), "score": 0.0, "kl_per_token": 0.0, "kl_coef": 0.1,
                "kl_exact_per_token": v} for i, v in enumerate([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07], 1)]
    s = summarize_metrics(metrics)
    assert s["kl_exact_per_token_last"] == pytest.approx(np.mean([0.04, 0.05, 0.06]))  # the last pass's 3 steps
    assert s["kl_exact_per_token_last_se"] == pytest.approx(np.std([0.04, 0.05, 0.06], ddof=1) / np.sqrt(3))


def _job(tmp_path, name, body="", after=(), seconds=0.3):
    """A job that records when it ran and the thread count it was started with."""
    import sys

    code = (f"import os, time, json; t0 = time.time(); time.sleep({seconds}); {body}\n"
            f"open({str(tmp_path / (name + '.json'))!r}, 'w').write(json.dumps("
            f"[t0, time.time(), os.environ['OMP_NUM_THREADS']]))")
    return seeds.Job((0, name), [sys.executable, "-c", code], {}, tmp_path / f"{name}.log", after=list(after))


def test_seed_jobs_run_side_by_side_and_the_evaluation_waits_for_its_methods(tmp_path):
    import json

    jobs = [_job(tmp_path, "a"), _job(tmp_path, "b", seconds=0.6), _job(tmp_path, "eval", after=[(0, "a"), (0, "b")])]
    done = []
    seeds.run_jobs(jobs, workers=2, cores=2, on_done=lambda j: done.append(j.key[1]))
    ran = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b", "eval")}
    assert ran["a"][0] < ran["b"][1] and ran["b"][0] < ran["a"][1], "a and b ran side by side"
    assert ran["a"][2] == ran["b"][2] == "1", "side by side, one thread each"
    assert ran["eval"][0] >= max(ran["a"][1], ran["b"][1]), "the evaluation waited for both"
    assert ran["eval"][2] == "2", "alone, it gets both cores"
    assert done[-1] == "eval" and sorted(done) == ["a", "b", "eval"]
    assert all(j.seconds is not None and j.seconds >= 0.3 for j in jobs)


def test_a_failed_seed_job_stops_the_run_and_names_its_log(tmp_path):
    jobs = [_job(tmp_path, "bad", body="raise SystemExit(3)"), _job(tmp_path, "next", after=[(0, "bad")])]
    with pytest.raises(SystemExit, match="bad.log"):
        seeds.run_jobs(jobs, workers=2, cores=2)
    assert not (tmp_path / "next.json").exists()


def test_a_job_already_done_is_not_run_again_and_counts_as_finished(tmp_path):
    import json

    done = seeds.Job((0, "old"), ["false"], {}, tmp_path / "old.log", done=True)  # would fail if it ran
    jobs = [done, _job(tmp_path, "eval", after=[(0, "old")], seconds=0.0)]
    seeds.run_jobs(jobs, workers=2, cores=2)
    assert not (tmp_path / "old.log").exists() and done.seconds is None
    assert json.loads((tmp_path / "eval.json").read_text())[2] == "2"


def test_seed_jobs_keep_complete_checkpoints_and_only_a_current_evaluation(tmp_path):
    store = tmp_path / "seed0"
    (store / "sft").mkdir(parents=True)
    (store / "sft" / "policy_info.json").write_text("{}")
    (store / "dpo").mkdir()  # a run interrupted before it finished: no policy_info.json
    (store / "eval").mkdir()
    (store / "eval" / "results.json").write_text("{}")
    (tmp_path / "rm").mkdir()
    jobs = {j.key[1]: j for j in seeds.seed_jobs(0, ["sft", "dpo"], store, tmp_path / "rm", tmp_path / "rm")}
    assert jobs["sft"].done and not jobs["dpo"].done
    assert not jobs["eval"].done, "an evaluation older than a policy trained in this run is run again"
    (store / "dpo" / "policy_info.json").write_text("{}")
    jobs = {j.key[1]: j for j in seeds.seed_jobs(0, ["sft", "dpo"], store, tmp_path / "rm", tmp_path / "rm")}
    assert all(j.done for j in jobs.values())
    assert (store / "reward").resolve() == (tmp_path / "rm").resolve()


def test_the_training_kl_is_read_from_online_rl_logs_only(tmp_path):
    """SFT and DPO log losses in metrics.jsonl, no scores: no training KL (their logs stopped the first re-run);
    a PPO/GRPO log gives its last pass's exact KL."""
    import json

    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "metrics.jsonl").write_text("\n".join(json.dumps({"step": i, "loss": 2.5}) for i in range(1, 5)))
    assert seeds.last_training_kl(sft) is None and seeds.last_training_kl_se(sft) is None
    rl = tmp_path / "grpo"
    rl.mkdir()
    rows = [{"step": i, "pass": 1 + (i > 2), "score": 1.0, "kl_per_token": 0.0, "kl_coef": 0.1,
             "kl_exact_per_token": kl} for i, kl in enumerate([0.0, 0.01, 0.03, 0.05], 1)]
    (rl / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert seeds.last_training_kl(rl) == pytest.approx(0.04)
    assert seeds.last_training_kl_se(rl) == pytest.approx(0.01)


def test_each_seeds_cut_rates_and_judge_independence_are_tabled(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(seeds, "EVAL_COPIES", tmp_path)
    (tmp_path / "seed3").mkdir()
    policies = {k: {"cut_rate": c} for k, c in zip(("base", "sft", "dpo", "full", "lora", "grpo"),
                                                    (0.26, 0.1, 0.12, 0.08, 0.02, 0.06))}
    ind = {"pearson_length_controlled": [0.9, 0.86, 0.93],
           "test_pairs": {"agree": 56, "n": 63, "rate": [0.8889, 0.7880, 0.9451]}}
    (tmp_path / "seed3" / "results.json").write_text(json.dumps({"policies": policies, "judge_independence": ind}))
    rows = seeds.evaluation_table([3, 4]).splitlines()
    assert len(rows) == 3, "seed 4 has no evaluation: no row"
    assert rows[2] == ("| 3 | 26% / 10% / 12% / 8% / 2% / 6% | +0.90 [+0.86, +0.93] | "
                       "88.9% [78.8%, 94.5%] (56 of 63) |")


def test_the_trainers_final_probe_is_compared_with_the_evaluation(tmp_path):
    """The trainer's own final measurement (the probe at the run's last step: same policy, the evaluation's sampling)
    is read from overopt.jsonl and held against the evaluation's KL, interval against interval."""
    import json

    run = tmp_path / "ppo-full"
    run.mkdir()
    probes = [{"step": 0, "n_prompts": 16, "kl_exact_per_token": 0.0, "kl_exact_ci": [0.0, 0.0]},
              {"step": 12, "n_prompts": 16, "kl_exact_per_token": 0.052, "kl_exact_ci": [0.040, 0.066]},
              {"step": 6, "n_prompts": 16, "kl_exact_per_token": 0.090, "kl_exact_ci": [0.070, 0.110]}]
    (run / "overopt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    fields = seeds.final_probe_fields(run)
    assert fields == {"kl_training_final_probe": [0.052, 0.040, 0.066], "kl_training_final_probe_step": 12,
                      "kl_training_final_probe_prompts": 16}, "the last step's probe, not the file's last line"
    assert seeds.final_probe_fields(tmp_path) == {}, "a run without a probe (SFT, DPO)"
    ev = [0.055, 0.045, 0.065]
    assert seeds.final_kls_agree({**fields, "kl_exact_per_token": ev}) is True
    assert seeds.final_kls_agree({"kl_training_final_probe": [0.120, 0.100, 0.140], "kl_exact_per_token": ev}) is False
    assert seeds.final_kls_agree({"kl_exact_per_token": ev}) is None
    rows = [{"method": "ppo-full", "seed": s, **fields, "kl_exact_per_token": ev, "judge_gain": [0.1, 0.0, 0.2],
             "rm_gain": [0.1, 0.0, 0.2]} for s in range(3)]
    rows[2]["kl_training_final_probe"] = [0.120, 0.100, 0.140]
    text, _ = seeds.table(rows)
    assert "0.052, 0.052, 0.120 (agree with the evaluation's within intervals: 2/3)" in text


def test_the_evaluations_kl_on_the_probes_prompts():
    """The evaluation's KL restricted to its first n prompts (the probe's) from results.json's per-prompt sums, with
    the evaluation's bootstrap; what the table compares with the probe where it is there."""
    results = {"settings": {"bootstrap_samples": 500},
               "per_prompt": {"full": {"kl_exact_sum": [1.0, 2.0, 30.0, 40.0], "kl_tokens": [10, 20, 30, 40]}}}
    first = seeds.eval_kl_on_first(results, "full", 2)
    assert first[0] == pytest.approx(0.1) and first[1] <= first[0] <= first[2]
    assert seeds.eval_kl_on_first(results, "full", 8) is None, "more prompts than the evaluation asked"
    assert seeds.eval_kl_on_first({"per_prompt": {"full": {"reward": [1.0]}}}, "full", 1) is None, "an older file"
    row = {"method": "ppo-full", "seed": 0, "kl_training_final_probe": [0.060, 0.050, 0.070],
           "kl_exact_per_token": [0.090, 0.085, 0.095], "kl_exact_per_token_probe_prompts": [0.062, 0.052, 0.072],
           "judge_gain": [0.1, 0.0, 0.2], "rm_gain": [0.1, 0.0, 0.2]}
    assert seeds.final_kls_agree(row) is True, "held against the evaluation on the same prompts"
    assert seeds.final_kls_agree({k: v for k, v in row.items() if k != "kl_exact_per_token_probe_prompts"}) is False
    text, _ = seeds.table([row])
    assert "0.060 (0.062) (agree with the evaluation's within intervals: 1/1)" in text
