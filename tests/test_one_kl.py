"""One KL (issue 25, item 3): the evaluation samples as the trainers do (temperature alone), so its exact KL and the
training log's are the same quantity; on a tiny policy both measurements agree within their intervals."""
import contextlib

import pytest
import torch

from rlhflab.config import EvalConfig, GRPOConfig, PPOConfig, build_config
from rlhflab.measure.ppo_metrics import LAST_PASS, summarize_metrics


@pytest.mark.parametrize("profile", ["spec", "demo"])
def test_the_evaluation_samples_as_the_trainers_do(profile):
    from rlhflab.measure.evaluation import _settings

    ev, ppo, grpo = (build_config(c, profile) for c in (EvalConfig, PPOConfig, GRPOConfig))
    s = _settings(ev)
    assert (s.top_k, s.top_p, s.repetition_penalty, s.greedy) == (0, 1.0, 1.0, False)
    assert s.temperature == ppo.temperature == grpo.temperature


def test_one_named_window_last_pass():
    records = [{"step": i, "pass": 1 + (i > 4), "score": 0.0, "kl_per_token": 0.01 * i, "kl_coef": 0.1,
                "kl_exact_per_token": 0.02 * i} for i in range(1, 9)]
    s = summarize_metrics(records)
    assert s["last_window_name"] == LAST_PASS == "last pass"
    assert s["kl_exact_per_token_last"] == pytest.approx(0.02 * (5 + 6 + 7 + 8) / 4), "the whole last pass"


@contextlib.contextmanager
def _use(model):
    yield model


def test_training_and_evaluation_kl_agree_on_the_same_policy(tiny_llama_dir):
    """The trainers' measurement (PPO's _ExactKLCapture: the rollouts' own logits / (T + 1e-7) against the
    reference's, over the response positions up to the stop token) and the evaluation's (generate_batch with the
    evaluation's default settings, then exact_kl_of_responses) on the same policy, other samples: the two intervals
    overlap and the estimates are close."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhflab.generation.sampling import (GenerationSettings, encode_prompts, generate_batch, sample_responses,
                                             stop_token_ids)
    from rlhflab.measure.evaluation import _settings
    from rlhflab.measure.kl import exact_kl_of_responses, kl_sums
    from rlhflab.measure.stats import ratio_bootstrap_ci

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.padding_side = "left"
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    torch.manual_seed(3)
    with torch.no_grad():  # a policy some way from its reference
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    prompts = [f"Question {i}: name a colour." for i in range(48)]
    cfg = build_config(EvalConfig, "demo", max_new_tokens=10, seed=7)
    temperature = cfg.temperature

    gens = generate_batch(policy, tok, prompts, _settings(cfg), batch_size=48)
    sums, counts = exact_kl_of_responses(lambda: _use(policy), lambda: _use(reference), tok, prompts,
                                         [g.token_ids for g in gens], temperature=temperature, batch_size=48)
    evaluation = ratio_bootstrap_ci(sums, counts, samples=1000, seed=1)

    batch, _ = encode_prompts(tok, prompts, 64)
    stop = stop_token_ids(tok, policy)
    settings = GenerationSettings(temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                  max_new_tokens=10)  # PPO's batch_generation settings
    responses = sample_responses(policy, batch["input_ids"], batch["attention_mask"], settings, stop, tok.pad_token_id,
                                 generator=torch.Generator().manual_seed(11))
    ids = torch.cat([batch["input_ids"], responses], 1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(responses)], 1)
    ctx = batch["input_ids"].shape[1]
    with torch.no_grad():
        logits = [m(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
                  [:, ctx - 1:-1].float() / (temperature + 1e-7) for m in (policy, reference)]
    ended = torch.zeros_like(responses, dtype=torch.bool)  # positions after a stop token are not the response
    for s in stop:
        ended |= (responses == s).long().cumsum(1).roll(1, 1).clamp(max=1).bool() & (torch.arange(
            responses.shape[1]) > 0)
    per_row = [kl_sums(logits[0][i:i + 1], logits[1][i:i + 1], responses[i:i + 1], (~ended[i:i + 1]).long())
               for i in range(len(prompts))]
    training = ratio_bootstrap_ci([float(r[0]) for r in per_row], [float(r[3]) for r in per_row], samples=1000, seed=2)

    assert evaluation[0] > 0.01, "the policy is some way from its reference"
    assert evaluation[1] <= training[2] and training[1] <= evaluation[2], (evaluation, training)
    assert training[0] == pytest.approx(evaluation[0], rel=0.15)


@pytest.mark.parametrize("cls", [PPOConfig, GRPOConfig])
def test_the_trainers_final_probe_samples_as_the_evaluation_does(cls):
    """The probe at a run's last step is the trainer's own measurement of its final policy, which bench/seeds.py holds
    against the evaluation's: in the demo it samples held-out prompts with the evaluation's settings and budget."""
    from types import SimpleNamespace

    from rlhflab.measure.evaluation import _settings
    from rlhflab.measure.overopt import OverOptProbe

    train, ev = build_config(cls, "demo"), build_config(EvalConfig, "demo")
    asked = SimpleNamespace(temperature=train.temperature,
                            max_new_tokens=train.probe_max_new_tokens or train.max_response_length)
    probe, s = OverOptProbe.settings(asked), _settings(ev)
    fields = ("temperature", "top_k", "top_p", "repetition_penalty", "greedy", "max_new_tokens")
    assert [getattr(probe, f) for f in fields] == [getattr(s, f) for f in fields]
    assert train.probe_every > 0 and train.num_heldout >= train.probe_prompts
