"""PPO with tiny models: KL at step 0, both modes, LoRA leaves the base untouched, controller, logs, reload."""
import json

import pytest
import torch
from conftest import oasst_rows, tiny_cfg, write_jsonl

from rlhflab.errors import UserError
from rlhflab.models.loading import load_causal_lm, load_policy
from rlhflab.training.online import AdaptiveKLController
from rlhflab.training.ppo import build_value_model, ppo_batch_plan, train_ppo

FIELDS = {"step", "episode", "kl_per_token", "kl_per_sequence", "kl_coef", "score", "rlhf_reward",
          "entropy_per_token", "response_tokens_mean", "lr", "seconds_per_step"}


def test_batch_arithmetic_of_the_spec():
    plan = ppo_batch_plan(64, 16, 1000, 3)
    assert plan["per_device_train_batch_size"] * plan["gradient_accumulation_steps"] == 64
    assert plan["local_rollout_forward_batch_size"] == 16 and plan["num_mini_batches"] == 1
    assert plan["steps"] == 47 and plan["total_episodes"] == 3000
    assert ppo_batch_plan(8, 8, 200, 1, max_steps=14)["steps"] == 14
    with pytest.raises(UserError):
        ppo_batch_plan(64, 24, 1000, 3)


def test_adaptive_kl_controller_matches_hand_values():
    c = AdaptiveKLController(value=0.1, target=0.05, horizon=100)
    assert c.update(0.06, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error 0.2
    c = AdaptiveKLController(value=0.1, target=0.05, horizon=100)
    assert c.update(1.0, 10) == pytest.approx(0.1 * 1.02)  # error clipped to +0.2
    c = AdaptiveKLController(value=0.1, target=0.05, horizon=100)
    assert c.update(0.0, 10) == pytest.approx(0.1 * 0.98)  # error clipped to -0.2
    c = AdaptiveKLController(value=0.1, target=0.05, horizon=100)
    assert c.update(0.04, 50) == pytest.approx(0.1 * (1 - 0.2 * 0.5))


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("run", ["full_run", "lora_run"])
def test_kl_at_step_zero_is_zero_and_log_has_one_record_per_step(run, request):
    path = request.getfixturevalue(run)
    records = _metrics(path)
    assert [r["step"] for r in records] == [1, 2]
    assert FIELDS <= set(records[0])
    # Step 1's rollout is scored before any update: policy == reference, so KL must be ~0.
    assert abs(records[0]["kl_per_token"]) < 1e-3
    assert records[0]["kl_per_sequence"] == pytest.approx(records[0]["kl_per_token"] * records[0]["response_tokens_mean"])
    assert records[1]["episode"] == 8
    # every rollout's score is logged with its prompt, and the step's score is their mean
    batch = json.loads((path / "ppo_info.json").read_text())["rollout_batch"]
    assert len(records[0]["rollout_scores"]) == batch == len(records[0]["rollout_prompts"])
    assert records[0]["score"] == pytest.approx(sum(records[0]["rollout_scores"]) / batch, abs=1e-3)
    assert records[0]["lr"] == pytest.approx(1e-3)  # the configured learning rate at step 1
    info = json.loads((path / "ppo_info.json").read_text())
    assert info["steps"] == 2
    assert (path / "heldout_prompts.jsonl").is_file() and "KL" in (path / "README.md").read_text()


def test_full_mode_changes_the_weights(full_run, tiny_llama_dir):
    before, _ = load_causal_lm(str(tiny_llama_dir))
    after, _ = load_policy(str(full_run))
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)]
    assert changed


def test_lora_mode_trains_only_adapters_and_reloads(lora_run, tiny_llama_dir):
    assert (lora_run / "adapter_config.json").is_file() and not (lora_run / "model.safetensors").exists()
    cfg = json.loads((lora_run / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"] and cfg["r"] == 8 and cfg["lora_alpha"] == 32
    base, _ = load_causal_lm(str(tiny_llama_dir))
    reference = {n: p.clone() for n, p in base.named_parameters()}
    policy, tok = load_policy(str(lora_run))
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # adapters moved away from their zero init
    for name, p in policy.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, reference[key]), f"base weight {key} changed"
    from rlhflab.generation.sampling import GenerationSettings, generate_batch
    out = generate_batch(policy, tok, ["Hello?"], GenerationSettings(greedy=True, max_new_tokens=4))
    assert out[0].num_tokens > 0
    info = json.loads((lora_run / "ppo_info.json").read_text())
    assert 0 < info["policy_trainable_params"] < info["policy_total_params"] / 10


def test_not_a_reward_model_stops_before_training(tmp_path, tiny_llama_dir, prompts_file):
    cfg = tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_llama_dir, prompts_file)
    with pytest.raises(UserError, match="not a reward model"):
        train_ppo(cfg)


def test_empty_and_too_long_prompt_sets(tmp_path, tiny_llama_dir, tiny_reward_dir):
    empty = write_jsonl(tmp_path / "empty.jsonl", oasst_rows([]) + [{"text": "x", "role": "assistant"}])
    with pytest.raises(UserError, match="no prompter messages"):
        train_ppo(tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, str(empty)))
    long = write_jsonl(tmp_path / "long.jsonl", oasst_rows([("word " * 200) + str(i) for i in range(20)]))
    with pytest.raises(UserError, match="longer than --max-prompt-length"):
        train_ppo(tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, str(long)))


def test_resume_continues_the_step_count(tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file, monkeypatch):
    import rlhflab.training.ppo as ppo

    zeroed = []

    def spy(source, freeze_layers, pad_token_id, zero_head=False):
        zeroed.append(zero_head)
        return build_value_model(source, freeze_layers, pad_token_id, zero_head)

    monkeypatch.setattr(ppo, "build_value_model", spy)
    train_ppo(tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, max_steps=1,
                       value_head="zero"))
    out = train_ppo(tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, max_steps=2,
                             resume=True, value_head="zero"))
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    assert zeroed == [True, False]  # a resumed run keeps the value head it learned
    from rlhflab.measure.overopt import read_overopt

    # probes before training and at each run's last step; the resumed run does not probe step 0 again
    assert [r["step"] for r in read_overopt(out)] == [0, 1, 2]


def test_value_model_starts_from_the_reward_model_with_its_head_or_a_zero_head(tiny_reward_dir):
    from transformers import AutoModelForSequenceClassification

    reward = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir)
    ids = torch.randint(5, 100, (2, 12))

    def values(model):  # one value per position, read the way TRL's PPO reads them
        with torch.no_grad():
            hidden = getattr(model, model.base_model_prefix)(input_ids=ids).last_hidden_state
            return model.score(hidden).squeeze(-1)

    copied = build_value_model(tiny_reward_dir, 1, 0)
    zeroed = build_value_model(tiny_reward_dir, 1, 0, zero_head=True)
    assert torch.equal(values(copied), values(reward)) and values(reward).std() > 0
    assert torch.equal(values(zeroed), torch.zeros(2, 12))
    body, reward_body = getattr(zeroed, zeroed.base_model_prefix), getattr(reward, reward.base_model_prefix)
    assert torch.equal(body.layers[1].mlp.up_proj.weight, reward_body.layers[1].mlp.up_proj.weight)
    assert not body.layers[0].mlp.up_proj.weight.requires_grad and body.layers[1].mlp.up_proj.weight.requires_grad
    assert zeroed.config.pad_token_id == 0


def test_unfinished_rollouts_are_closed_with_eos_before_scoring():
    from rlhflab.training.ppo import close_unfinished

    pad, eos, ctx = 0, 2, 2
    qr = torch.tensor([[5, 6, 7, 8, 9],     # unfinished, fills the width
                       [5, 6, 7, 2, 0],     # finished: untouched
                       [5, 6, 7, 0, 0]])    # unfinished, shorter
    out = close_unfinished(qr, ctx, pad, eos)
    assert out.tolist() == [[5, 6, 7, 8, 9, 2], [5, 6, 7, 2, 0, 0], [5, 6, 7, 2, 0, 0]]
    finished = torch.tensor([[5, 6, 2, 0]])
    assert close_unfinished(finished, ctx, pad, eos) is finished


def test_first_and_last_pass_over_the_same_prompts_are_compared():
    from rlhflab.measure.ppo_metrics import summarize_metrics

    rows = [{"step": s, "pass": (s - 1) // 3 + 1, "score": float(s), "kl_per_token": 0.01 * s, "kl_coef": 0.1}
            for s in range(1, 10)]
    s = summarize_metrics(rows)
    assert s["windows"] == "passes" and s["window_steps"] == 3
    assert s["score_first"] == pytest.approx(2.0) and s["score_last"] == pytest.approx(8.0)
    no_pass = [{k: v for k, v in r.items() if k != "pass"} for r in rows[:8]]
    s = summarize_metrics(no_pass)
    assert s["windows"] == "steps" and s["window_steps"] == 2 and s["score_last"] == pytest.approx(7.5)


def test_kl_at_step_zero_under_bf16_autocast(tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file):
    from rlhflab.models.precision import autocast_dtype

    if autocast_dtype(True) is None:
        pytest.skip("this CPU has no fast bf16 (AMX/AVX512-bf16), so autocast is off")
    out = train_ppo(tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, max_steps=1,
                             bf16=True))
    record = _metrics(out)[0]
    # rollout log-probs and reference log-probs come from the same autocast forward: exactly 0 KL
    assert abs(record["kl_per_token"]) < 1e-4
    assert json.loads((out / "ppo_info.json").read_text())["bf16"] is True


def test_lora_under_bf16_autocast_moves_the_adapters(tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file):
    from rlhflab.models.precision import autocast_dtype

    if autocast_dtype(True) is None:
        pytest.skip("this CPU has no fast bf16 (AMX/AVX512-bf16), so autocast is off")
    out = train_ppo(tiny_cfg(tmp_path, "lora", tiny_llama_dir, tiny_reward_dir, prompts_file, bf16=True))
    policy, _ = load_policy(str(out))
    assert any(p.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    records = _metrics(out)
    assert abs(records[0]["kl_per_token"]) < 1e-4 and records[1]["kl_per_token"] != 0.0


def test_paired_score_gain_matches_hand_computed_differences():
    from rlhflab.measure.ppo_metrics import paired_pass_gain

    # two passes over prompts 1..4; prompt k scores k in pass 1 and k + 0.5 (k odd) or k + 1.5 (k even) in pass 2
    rows = [{"step": 1, "pass": 1, "rollout_prompts": [1, 2], "rollout_scores": [1.0, 2.0]},
            {"step": 2, "pass": 1, "rollout_prompts": [3, 4], "rollout_scores": [3.0, 4.0]},
            {"step": 3, "pass": 2, "rollout_prompts": [4, 1], "rollout_scores": [5.5, 1.5]},
            {"step": 4, "pass": 2, "rollout_prompts": [2, 3], "rollout_scores": [3.5, 3.5]}]
    gain = paired_pass_gain(rows)
    assert gain["n_prompts"] == 4 and gain["mean"] == pytest.approx(1.0)
    assert gain["low"] >= 0.5 - 1e-9 and gain["high"] <= 1.5 + 1e-9
    assert paired_pass_gain([dict(r, **{"pass": 1}) for r in rows]) is None  # one pass: nothing to pair


def test_the_optimizer_is_chosen_by_name_per_mode_and_recorded(full_run, lora_run, tmp_path, tiny_llama_dir,
                                                                tiny_reward_dir, prompts_file):
    from rlhflab.config import PPOConfig, build_config

    # the demo profile: plain SGD for full PPO, AdamW for the adapters; the spec profile: AdamW for both
    assert json.loads((full_run / "ppo_info.json").read_text())["optimizer"] == "SGD"
    assert json.loads((lora_run / "ppo_info.json").read_text())["optimizer"] == "AdamW"
    spec = build_config(PPOConfig, "spec")
    assert spec.optim == "adamw_torch_fused" and spec.lora_optim is None
    # the demo's value head starts at zero with GAE lambda 1, and TRL got that lambda; the spec keeps TRL's defaults
    info = json.loads((full_run / "ppo_info.json").read_text())
    assert (info["value_head"], info["gae_lambda"]) == ("zero", 1.0)
    assert (spec.value_head, spec.gae_lambda) == ("reward", 0.95)
    out = train_ppo(tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file,
                             optim="adamw_torch_fused", max_steps=1))
    assert json.loads((out / "ppo_info.json").read_text())["optimizer"] == "AdamW"
    assert [r["step"] for r in _metrics(out)] == [1]


def test_exact_kl_logged_in_training_agrees_with_the_evaluation_function(tmp_path, tiny_llama_dir, tiny_reward_dir,
                                                                           prompts_file, monkeypatch):
    """The training-side exact KL (captured from TRL's rollout and reference logits) and the evaluation-side one
    (rlhflab.measure.kl.exact_kl_of_responses, two fresh forward passes) on the same rollout tokens and the same policy."""
    import contextlib
    import shutil

    import rlhflab.training.online as online
    from rlhflab.data.oasst1 import read_prompts
    from rlhflab.measure.kl import exact_kl_of_responses
    from rlhflab.measure.overopt import read_overopt
    from rlhflab.models.prompts import format_prompt, with_system

    rollouts = []
    sample = online.sample_responses

    def spy(model, input_ids, attention_mask, *args, **kwargs):  # each step's rollout tokens, as they were sampled
        responses = sample(model, input_ids, attention_mask, *args, **kwargs)
        rollouts.append((input_ids.clone(), attention_mask.bool(), responses.clone()))
        return responses

    monkeypatch.setattr(online, "sample_responses", spy)
    judge = tmp_path / "judge"  # a copy: the probe refuses the training reward model itself as its judge
    shutil.copytree(tiny_reward_dir, judge)
    cfg = tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, optim="adamw_torch", lr=1e-2,
                   judge_model=str(judge))
    work = tmp_path / ".ppo-full-work"

    def keep_step_one_policy(record):  # the policy that sampled step 2's rollouts
        if record["step"] == 1:
            shutil.copytree(work / "saved" / "policy", tmp_path / "policy-1")

    out = train_ppo(cfg, on_step=keep_step_one_policy)
    records = _metrics(out)
    assert [r["kl_controller_estimator"] for r in records] == ["exact", "exact"]
    assert records[0]["kl_estimator"] == "k1"  # kl_per_token keeps its meaning for old logs and the app
    # step 1's rollouts come from the start, before any update: policy == reference
    assert abs(records[0]["kl_exact_per_token"]) < 1e-6 and abs(records[0]["kl_k3_per_token"]) < 1e-6

    _, tok = load_causal_lm(str(tiny_llama_dir))
    asked = [with_system(p, cfg.system_prompt) for p in read_prompts(out / "train_prompts.jsonl")]
    by_ids = {tuple(tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"]): i for i, p in enumerate(asked)}
    assert [r[2].shape[0] for r in rollouts] == [cfg.batch_size] * 2  # one call per step: the whole rollout batch
    input_ids, attention_mask, responses = rollouts[1]
    step_prompts, response_ids = [], []
    for query, mask, row in zip(input_ids, attention_mask, responses):
        step_prompts.append(asked[by_ids[tuple(query[mask].tolist())]])  # the rollouts were asked with the system
        response = []
        for t in row.tolist():  # TRL's mask: up to and including EOS, padding excluded
            if t == tok.pad_token_id:
                break
            response.append(t)
            if t == tok.eos_token_id:
                break
        response_ids.append(response)
    policy, _ = load_causal_lm(str(tmp_path / "policy-1"))
    reference, _ = load_causal_lm(str(tiny_llama_dir))
    sums, counts = exact_kl_of_responses(lambda: contextlib.nullcontext(policy),
                                         lambda: contextlib.nullcontext(reference), tok, step_prompts, response_ids,
                                         temperature=cfg.temperature)
    evaluation_side = sum(sums) / sum(counts)
    assert evaluation_side > 1e-3  # the update moved the policy: the agreement below is not 0 == 0
    assert records[1]["kl_exact_per_token"] == pytest.approx(evaluation_side, abs=1e-4, rel=1e-3)

    # the over-optimisation probe: before training and at the last step, judge fields filled (a judge was given)
    probes = read_overopt(out)
    assert [p["step"] for p in probes] == [0, 2] and probes[0]["kl_exact_per_token"] == pytest.approx(0, abs=1e-6)
    assert probes[1]["kl_exact_per_token"] > 0 and probes[1]["judge_score_mean"] is not None
    assert probes[1]["judge_model"] == str(judge) and len(probes[1]["judge_score_ci"]) == 2
    card = (out / "README.md").read_text()
    assert "exact" in card and "overopt.jsonl" in card


def _fake_step(log_path, kl_estimator, controller, exact_sums):
    """One PPO step's log through the metrics callback, without TRL: TRL's k1 is 0.7 nats over 10-token responses
    (0.07 nats/token), the captured exact KL 0.5 nats over 10 tokens (0.05 nats/token)."""
    from types import SimpleNamespace

    from rlhflab.config import PPOConfig, build_config
    from rlhflab.training.online import ExactKLSums, KLCoefficient
    from rlhflab.training.ppo import ppo_step_log

    exact = ExactKLSums()
    exact.add(torch.tensor(exact_sums, dtype=torch.float64))
    trainer = SimpleNamespace(pop_step=lambda: {"length": 10.0, "scores": [], "prompt_keys": [],
                                                "kls": exact.pop()})
    cfg = build_config(PPOConfig, "spec", kl_estimator=kl_estimator, fixed_kl=controller is None,
                       kl_target=controller.target if controller else 0.05,
                       kl_horizon=controller.horizon if controller else 100)
    kl = KLCoefficient(cfg, controller.value if controller else 0.1)
    records = []
    callback = ppo_step_log(trainer, log_path, kl, 0, 0, 0, after_step=records.append)
    args = SimpleNamespace(kl_coef=kl.value, batch_size=8)
    state = SimpleNamespace(global_step=1, episode=8, is_world_process_zero=True)
    logs = {"objective/kl": 0.7, "objective/scores": 1.0, "objective/rlhf_reward": 1.0,
            "objective/non_score_reward": 0.0, "objective/entropy": 20.0}
    callback.on_log(args, state, None, logs=logs)
    return records[0]


@pytest.mark.parametrize("estimator,kl", [("exact", 0.05), ("k1", 0.07), ("k3", 0.04)])
def test_the_controller_follows_the_chosen_estimator(estimator, kl, tmp_path):
    log = tmp_path / "metrics.jsonl"
    record = _fake_step(log, estimator, AdaptiveKLController(0.1, 0.06, 100), [0.5, 0.6, 0.4, 10.0])
    written = json.loads(log.read_text())
    assert {k: written[k] for k in ("kl_exact_per_token", "kl_k3_per_token", "kl_controller_estimator")} == {
        k: record[k] for k in ("kl_exact_per_token", "kl_k3_per_token", "kl_controller_estimator")}
    assert record["kl_exact_per_token"] == pytest.approx(0.05) and record["kl_per_token"] == pytest.approx(0.07)
    assert record["kl_k3_per_token"] == pytest.approx(0.04) and record["kl_estimator"] == "k1"
    assert record["kl_controller_estimator"] == estimator
    assert record["kl_coef_next"] == pytest.approx(AdaptiveKLController(0.1, 0.06, 100).update(kl, 8))
    # nothing captured (e.g. a TRL change): TRL's k1 drives the controller, and the record says so
    none = _fake_step(tmp_path / "none.jsonl", estimator, AdaptiveKLController(0.1, 0.06, 100), [0.0, 0.0, 0.0, 0.0])
    assert none["kl_exact_per_token"] is None and none["kl_controller_estimator"] == "k1"
    assert none["kl_coef_next"] == pytest.approx(AdaptiveKLController(0.1, 0.06, 100).update(0.07, 8))


def test_summary_and_table_show_exact_kl_next_to_k1():
    from rlhflab.measure.ppo_metrics import run_summary_table, summarize_metrics

    rows = [{"step": s, "score": 1.0, "kl_per_token": 0.2, "kl_estimator": "k1", "kl_exact_per_token": 0.05,
             "kl_coef": 0.1} for s in range(1, 5)]
    s = summarize_metrics(rows)
    assert s["kl_exact_per_token_last"] == pytest.approx(0.05) and s["kl_estimator"] == "k1"
    table = run_summary_table({"ppo-full": s})
    assert "0.0500 → 0.0500" in table and "0.2000 → 0.2000 (k1)" in table and "yes (exact)" in table
    old = summarize_metrics([{k: v for k, v in r.items() if k != "kl_exact_per_token"} for r in rows])
    assert old["kl_exact_per_token_last"] is None and "not logged" in run_summary_table({"old": old})
    assert "no (k1)" in run_summary_table({"old": old})  # an old log is judged on its k1, and says so
