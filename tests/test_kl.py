"""Exact KL: known analytic values, zero between identical models, and the evaluation's per-response sums on the
tokens a policy generated (end-of-turn token included)."""
import contextlib
import math

import pytest
import torch

from rlhflab.measure import stats
from rlhflab.measure.kl import exact_kl_of_responses, exact_kl_sum


def test_exact_kl_matches_hand_computed_values():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.5, 0.25])
    kl, n = exact_kl_sum(p.log(), q.log(), torch.tensor(True))
    assert n == 1 and float(kl) == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5), abs=1e-6)  # 0.1733 nats
    # a masked batch sums only the kept positions; a temperature reshapes both distributions first
    logits_p = torch.stack([p.log(), q.log(), p.log()])
    logits_q = torch.stack([q.log(), q.log(), p.log()])
    kl, n = exact_kl_sum(logits_p, logits_q, torch.tensor([1, 1, 0]))
    assert n == 2 and float(kl) == pytest.approx(0.25 * math.log(2), abs=1e-6)
    t = 0.5
    pt, qt = torch.softmax(p.log() / t, -1), torch.softmax(q.log() / t, -1)
    kl, _ = exact_kl_sum(p.log(), q.log(), torch.tensor(True), temperature=t)
    assert float(kl) == pytest.approx(float((pt * (pt / qt).log()).sum()), abs=1e-6)


def test_total_kl_over_total_tokens_with_its_interval():
    est, lo, hi = stats.ratio_bootstrap_ci([1.0, 3.0], [10, 10], samples=500)
    assert est == pytest.approx(0.2) and lo <= est <= hi
    assert stats.ratio_bootstrap_ci([2.0, 2.0], [4, 4], samples=200) == (0.5, 0.5, 0.5)


def test_evaluation_kl_on_generated_tokens(tiny_llama_dir):
    from rlhflab.generation.sampling import GenerationSettings, generate_batch
    from rlhflab.models.loading import load_causal_lm

    model, tok = load_causal_lm(str(tiny_llama_dir))
    other, _ = load_causal_lm(str(tiny_llama_dir))
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in other.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    prompts = ["Name a fruit.", "Tell me a fact about the sea."]
    gens = generate_batch(model, tok, prompts, GenerationSettings(max_new_tokens=6, seed=1).validate())
    for g in gens:
        assert len(g.token_ids) == g.num_tokens + (1 if g.finished else 0)  # the end-of-turn token is kept
    ids = [g.token_ids for g in gens]

    def holder(m):
        return lambda: contextlib.nullcontext(m)

    same, counts = exact_kl_of_responses(holder(model), holder(model), tok, prompts, ids, temperature=0.7)
    assert counts == [len(i) for i in ids] and all(abs(x) < 1e-6 for x in same)
    moved, _ = exact_kl_of_responses(holder(other), holder(model), tok, prompts, ids, temperature=0.7)
    assert all(x > 0 for x in moved)
    # the same KL, position by position, from one full forward pass of each model
    from rlhflab.measure.kl import response_batch, response_logits

    full, mask, resp_mask, ctx = response_batch(tok, prompts, ids, 1024)
    kl, n = exact_kl_sum(response_logits(other, full, mask, ctx), response_logits(model, full, mask, ctx), resp_mask,
                         temperature=0.7)
    assert float(kl) == pytest.approx(sum(moved), rel=1e-5) and int(n) == sum(counts)


def test_training_side_sums_exact_k1_and_k3_of_hand_built_distributions():
    from rlhflab.measure.kl import KLAccumulator, kl_sums

    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.5, 0.25])
    # one sequence of three positions, the last one padding; tokens 0 and 1 were sampled
    policy = torch.stack([p.log(), p.log(), q.log()]).unsqueeze(0)
    reference = torch.stack([q.log(), q.log(), p.log()]).unsqueeze(0)
    tokens, mask = torch.tensor([[0, 1, 2]]), torch.tensor([[1, 1, 0]])
    exact, k1, k3, n = kl_sums(policy, reference, tokens, mask).tolist()
    kl_pq = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert n == 2 and exact == pytest.approx(2 * kl_pq, abs=1e-6)
    # sampled token 0: r = log q - log p = log(1/2); token 1: r = log 2
    r = [math.log(0.5), math.log(2)]
    assert k1 == pytest.approx(-sum(r), abs=1e-6)
    assert k3 == pytest.approx(sum(math.exp(x) - 1 - x for x in r), abs=1e-6)
    # a token the policy cannot sample (logit -inf) contributes 0, not NaN
    masked = torch.tensor([[[0.0, 0.0, -math.inf]]])
    uniform = torch.zeros(1, 1, 3)
    exact, *_ = kl_sums(masked, uniform, torch.tensor([[0]]), torch.tensor([[1]])).tolist()
    assert exact == pytest.approx(math.log(1.5), abs=1e-6)  # KL([1/2, 1/2, 0] || uniform)
    acc = KLAccumulator()
    assert acc.pop() is None  # nothing captured: no number rather than 0
    acc.add(torch.tensor([0.3, 0.4, 0.5, 10.0], dtype=torch.float64))
    acc.add(torch.tensor([0.1, 0.0, 0.1, 10.0], dtype=torch.float64))
    out = acc.pop()
    assert out == pytest.approx({"exact": 0.02, "k1": 0.02, "k3": 0.03, "tokens": 20})
    assert acc.pop() is None  # pop starts the next step at zero


def test_exact_kl_sum_in_chunks_equals_one_pass():
    torch.manual_seed(0)
    a, b = torch.randn(5, 7, 11), torch.randn(5, 7, 11)
    mask = torch.rand(5, 7) > 0.3
    whole, n = exact_kl_sum(a, b, mask, temperature=0.7, chunk=10_000)
    parts, m = exact_kl_sum(a, b, mask, temperature=0.7, chunk=3)
    assert int(n) == int(m) == int(mask.sum()) and float(parts) == pytest.approx(float(whole), rel=1e-5)
