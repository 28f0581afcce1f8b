"""GRPO/RLOO with tiny models: KL at step 0, the per-step record, the adaptive KL coefficient, both modes saved and
reloaded, bad data, resume after an interruption, --init-from (and PPO's --init-from)."""
import json

import pytest
import torch
from conftest import tiny_cfg, write_jsonl

from rlhflab.errors import UserError
from rlhflab.models.loading import load_causal_lm, load_policy
from rlhflab.store.cards import read_policy_metadata

FIELDS = {"step", "pass", "episode", "kl_per_token", "kl_estimator", "kl_per_sequence", "kl_coef", "kl_coef_next",
          "score", "entropy_per_token", "response_tokens_mean", "lr", "seconds_per_step", "rollout_scores",
          "rollout_prompts", "clipped_ratio"}


def grpo_cfg(tmp_path, mode, base, reward, prompts, **kw):
    from rlhflab.config import GRPOConfig, build_config

    values = dict(mode=mode, base_model=str(base), reward_model=str(reward), dataset=prompts, lang=None,
                  num_prompts=16, num_heldout=4, batch_size=2, num_generations=2, epochs=1, max_prompt_length=64,
                  max_response_length=8, lr=1e-3, lora_lr=None, max_steps=2, bf16=False, kl_horizon=100,
                  output_dir=str(tmp_path / f"grpo-{mode}"), judge_model="", probe_max_new_tokens=None)
    values.update(kw)
    return build_config(GRPOConfig, "demo", **values)


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def grpo_full(tmp_path_factory, tiny_llama_dir, tiny_reward_dir, prompts_file):
    from rlhflab.training.grpo import train_grpo

    return train_grpo(grpo_cfg(tmp_path_factory.mktemp("grpo"), "full", tiny_llama_dir, tiny_reward_dir, prompts_file))


@pytest.fixture(scope="module")
def grpo_lora(tmp_path_factory, tiny_llama_dir, tiny_reward_dir, prompts_file):
    from rlhflab.training.grpo import train_grpo

    return train_grpo(grpo_cfg(tmp_path_factory.mktemp("grpo"), "lora", tiny_llama_dir, tiny_reward_dir, prompts_file))


def test_batch_plan_of_the_spec_and_the_demo():
    from rlhflab.training.grpo import grpo_batch_plan

    spec = grpo_batch_plan(16, 4, 1000, 1)  # 64 responses per step, in backward passes of 16
    assert spec["per_device_train_batch_size"] * spec["gradient_accumulation_steps"] == 64 == spec["completions_per_step"]
    assert spec["per_device_train_batch_size"] <= 16 and spec["steps"] == 63
    assert grpo_batch_plan(4, 4, 48, 2)["steps"] == 24 and grpo_batch_plan(4, 4, 48, 2, max_steps=5)["steps"] == 5
    assert grpo_batch_plan(16, 4, 1000, 1, world_size=2)["per_device_train_batch_size"] == 16
    with pytest.raises(UserError):
        grpo_batch_plan(3, 1, 100, 1, world_size=2)


@pytest.mark.parametrize("run", ["grpo_full", "grpo_lora"])
def test_step_one_kl_is_zero_and_the_record_matches_ppo(run, request):
    records = _metrics(request.getfixturevalue(run))
    assert [r["step"] for r in records] == [1, 2]
    assert FIELDS <= set(records[0])
    # step 1's responses are scored before any update: policy == reference, so KL must be ~0
    assert abs(records[0]["kl_per_token"]) < 1e-3 and records[0]["kl_estimator"] == "k3"
    # every step's rollouts (rollouts.jsonl), recorded apart from the metrics: the same scores in the same order,
    # lengths that average to TRL's logged mean length, per-sequence exact KL that adds up to the step's per token
    from rlhflab.store.rollouts import read_rollouts

    rollouts = read_rollouts(request.getfixturevalue(run))
    for r in records:
        step = [x for x in rollouts if x["step"] == r["step"]]
        assert [x["score"] for x in step] == r["rollout_scores"] and all(isinstance(x["response"], str) for x in step)
        assert sum(x["tokens"] for x in step) / len(step) == pytest.approx(r["response_tokens_mean"], rel=1e-6)
        assert sum(x["kl_exact"] for x in step) / sum(x["tokens"] for x in step) == pytest.approx(
            r["kl_exact_per_token"], rel=1e-3, abs=1e-7)
    assert len(records[0]["rollout_scores"]) == 4 == len(records[0]["rollout_prompts"])  # 2 prompts x 2 responses
    assert records[0]["score"] == pytest.approx(sum(records[0]["rollout_scores"]) / 4, abs=1e-3)
    # each prompt's group shares its key, and the keys are PPO's (prompt_key over the prompt's token ids)
    assert len(set(records[0]["rollout_prompts"])) == 2 and records[1]["episode"] == 8
    # the exact KL over the vocabulary (the default estimator): 0 before any update, positive after one
    assert abs(records[0]["kl_exact_per_token"]) < 1e-6 and records[1]["kl_exact_per_token"] > 0
    assert [r["kl_controller_estimator"] for r in records] == ["exact", "exact"]
    # the over-optimisation probe: before training and at the last step, copied into the checkpoint
    from rlhflab.measure.overopt import read_overopt

    probes = read_overopt(request.getfixturevalue(run))
    assert [p["step"] for p in probes] == [0, 2] and abs(probes[0]["kl_exact_per_token"]) < 1e-6
    assert probes[1]["kl_exact_per_token"] > 0 and probes[1]["judge_score_mean"] is None  # no judge in the tests


def test_kl_coefficient_follows_the_adaptive_controller(grpo_full):
    from rlhflab.training.online import AdaptiveKLController

    first, second = _metrics(grpo_full)
    expected = AdaptiveKLController(first["kl_coef"], 0.05, 100).update(first["kl_exact_per_token"], 4)
    assert first["kl_coef_next"] == pytest.approx(expected) and expected != first["kl_coef"]
    assert second["kl_coef"] == pytest.approx(first["kl_coef_next"])  # the trainer's beta was moved
    expected = AdaptiveKLController(second["kl_coef"], 0.05, 100).update(second["kl_exact_per_token"], 4)
    assert second["kl_coef_next"] == pytest.approx(expected)


def test_trls_own_estimator_adds_no_forward_and_drives_the_controller(tmp_path, tiny_llama_dir, tiny_reward_dir,
                                                                       prompts_file, monkeypatch):
    from rlhflab.training import grpo, online
    from rlhflab.training.online import AdaptiveKLController

    measured, sampled = [], []
    monkeypatch.setattr(grpo, "ExactKLSums", lambda: measured.append(1) or pytest.fail("no extra forward wanted"))
    sample = online.sample_responses
    monkeypatch.setattr(online, "sample_responses", lambda *a, **kw: sampled.append(a[1].shape[0]) or sample(*a, **kw))
    out = grpo.train_grpo(grpo_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, kl_estimator="k3",
                                   probe_every=0, lr=1e-2))
    first, second = _metrics(out)
    assert not measured and second["kl_exact_per_token"] is None and second["kl_controller_estimator"] == "k3"
    assert second["kl_per_token"] > 0
    expected = AdaptiveKLController(second["kl_coef"], 0.05, 100).update(second["kl_per_token"], 4)
    assert second["kl_coef_next"] == pytest.approx(expected)
    assert not (out / "overopt.jsonl").exists()  # probe_every 0: no probe
    assert sampled == [4, 4]  # the decode engine, once per step, the whole batch: 2 prompts x 2 generations


@pytest.mark.parametrize("run,mode", [("grpo_full", "full"), ("grpo_lora", "lora")])
def test_checkpoint_reloads_and_says_what_it_is(run, mode, request, tiny_llama_dir):
    path = request.getfixturevalue(run)
    meta = read_policy_metadata(path)
    assert meta["method"] == "grpo" and meta["mode"] == mode and meta["init_from"] == str(tiny_llama_dir)
    policy, tokenizer = load_policy(str(path))
    assert tokenizer.padding_side == "left"
    card = (path / "README.md").read_text()
    assert "nats/token" in card and "k3" in card and (path / "heldout_prompts.jsonl").is_file()
    assert not (path.parent / f".{path.name}-work").exists()  # the Trainer's checkpoints are gone after the save
    base, _ = load_causal_lm(str(tiny_llama_dir))
    if mode == "lora":
        assert (path / "adapter_config.json").is_file() and not (path / "model.safetensors").exists()
        assert any(p.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    else:
        assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), policy.parameters()))


def test_bad_dataset_is_one_sentence_and_leaves_no_folder(tmp_path, tiny_llama_dir, tiny_reward_dir):
    from rlhflab.training.grpo import train_grpo

    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": "x", "role": "assistant"}])
    cfg = grpo_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, str(empty), output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="no prompter messages"):
        train_grpo(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def test_resume_after_an_interruption_reaches_the_configured_step(tmp_path, tiny_llama_dir, tiny_reward_dir,
                                                                   prompts_file):
    from rlhflab.training.grpo import train_grpo

    cfg = dict(max_steps=3, batch_size=4)  # 16 prompts / 4 = 4 steps, capped at 3; Trainer checkpoint every step

    def interrupt(record):
        if record["step"] == 2:  # before step 2's checkpoint is written: the resume starts after step 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_grpo(grpo_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, **cfg), on_step=interrupt)
    work = tmp_path / ".grpo-full-work"
    assert (work / "checkpoint-1" / "kl_controller.json").is_file() and not (tmp_path / "grpo-full").exists()
    beta_after_1 = json.loads((work / "checkpoint-1" / "kl_controller.json").read_text())["kl_coef"]
    out = train_grpo(grpo_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, resume=True, **cfg))
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]  # step 2 logged once, by the run that finished it
    assert records[1]["kl_coef"] == pytest.approx(beta_after_1)  # the controller continued where it stopped


def test_init_from_a_policy_folder_starts_policy_and_reference_there(tmp_path, tiny_llama_dir, tiny_reward_dir,
                                                                    prompts_file, grpo_full):
    from rlhflab.training.grpo import train_grpo

    out = train_grpo(grpo_cfg(tmp_path, "lora", tiny_llama_dir, tiny_reward_dir, prompts_file, max_steps=1,
                              init_from=str(grpo_full)))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(grpo_full)
    assert read_policy_metadata(out)["init_from"] == str(grpo_full)
    # the reference is the start, not the base model: the first step's KL is still 0
    assert abs(_metrics(out)[0]["kl_per_token"]) < 1e-3
    load_policy(str(out))


def test_rloo_runs_and_names_its_kl_estimator(tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file, monkeypatch):
    from rlhflab.training import grpo, online

    sampled = []
    sample = online.sample_responses
    monkeypatch.setattr(online, "sample_responses", lambda *a, **kw: sampled.append(a[1].shape[0]) or sample(*a, **kw))
    out = grpo.train_grpo(grpo_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, algorithm="rloo",
                              max_steps=1, output_dir=str(tmp_path / "rloo")))
    record = _metrics(out)[0]
    assert record["kl_estimator"] == "k1" and abs(record["kl_per_token"]) < 1e-3
    assert abs(record["kl_exact_per_token"]) < 1e-6 and record["kl_controller_estimator"] == "exact"
    assert read_policy_metadata(out)["method"] == "rloo"
    assert sampled[0] == 4  # RLOO's rollouts on the decode engine too (then the probe's at its last step)


def test_ppo_init_from_a_policy_folder_is_recorded(tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file, grpo_full):
    from rlhflab.training.ppo import train_ppo

    out = train_ppo(tiny_cfg(tmp_path, "lora", tiny_llama_dir, tiny_reward_dir, prompts_file, max_steps=1,
                             init_from=str(grpo_full)))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(grpo_full)
    meta = read_policy_metadata(out)
    assert meta["method"] == "ppo" and meta["mode"] == "lora" and meta["init_from"] == str(grpo_full)
    assert json.loads((out / "policy_info.json").read_text())["init_from"] == str(grpo_full)
    assert abs(_metrics(out)[0]["kl_per_token"]) < 1e-3  # the reference is the start too
