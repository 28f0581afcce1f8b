"""KL between policies: the exact per-token KL over the vocabulary (the reference, SPEC §9) where both models'
logits are at hand, and the sampled estimates (k1, k3) from the log-probabilities of the sampled tokens."""
from __future__ import annotations

import torch

from rlhflab.generation.sampling import encode_prompts


def exact_kl_sum(policy_logits: torch.Tensor, reference_logits: torch.Tensor, mask: torch.Tensor,
                 temperature: float = 1.0, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over the masked positions of KL(p ‖ q), number of positions), with p and q the two models' next-token
    distributions softmax(logits / temperature): KL = Σ_v p_v (log p_v − log q_v), computed in fp32 over the whole
    vocabulary (exact, not a sampled estimate). Logits are (..., vocab), mask has their leading shape.

    Tokens a distribution gives probability 0 (logit -inf, e.g. masked by a sampler) contribute 0, not NaN. Positions
    are converted `chunk` at a time, so a long batch never holds more than a few (chunk, vocab) fp32 tensors."""
    m = mask.bool()  # select first: only the kept positions are converted to fp32 over the vocabulary
    total, _ = _chunked_kl(policy_logits[m], reference_logits[m], temperature, chunk)
    return total, m.sum()


def _chunked_kl(p_sel: torch.Tensor, q_sel: torch.Tensor, temperature: float, chunk: int,
                tokens: torch.Tensor | None = None, per_position: bool = False):
    """Σ KL(p ‖ q) over the rows of (positions, vocab) logits, `chunk` rows at a time; with `tokens`, also each
    row's log p and log q of its token, from the same log-softmax (one pass over the vocabulary per model); with
    `per_position`, also each row's KL (a third element)."""
    total = torch.zeros((), dtype=torch.float32, device=p_sel.device)
    picked_p, picked_q, rows = [], [], []
    for start in range(0, p_sel.shape[0], chunk):
        logp = torch.log_softmax(p_sel[start:start + chunk].float() / temperature, dim=-1)
        logq = torch.log_softmax(q_sel[start:start + chunk].float() / temperature, dim=-1)
        terms = torch.where(torch.isneginf(logp), 0.0, logp.exp() * (logp - logq)).sum(-1)
        total = total + terms.sum()
        if per_position:
            rows.append(terms)
        if tokens is not None:
            t = tokens[start:start + chunk].unsqueeze(-1)
            picked_p.append(logp.gather(-1, t).squeeze(-1))
            picked_q.append(logq.gather(-1, t).squeeze(-1))
    if tokens is None:
        return total, None
    picked = (torch.cat(picked_p), torch.cat(picked_q))
    return (total, picked, torch.cat(rows)) if per_position else (total, picked)


def kl_sums(policy_logits: torch.Tensor, reference_logits: torch.Tensor, tokens: torch.Tensor,
            mask: torch.Tensor, rows: list | None = None) -> torch.Tensor:
    """fp64 tensor [Σ exact KL, Σ k1, Σ k3, positions] over the masked positions of a batch of sampled sequences.

    Logits (batch, length, vocab) are already at the sampling temperature (divided by it); `tokens` (batch, length)
    are the sampled tokens. With r = log q(token) − log p(token): k1 = −r (TRL's PPO and RLOO), k3 = e^r − 1 − r
    (TRL's GRPO, Schulman's estimator); exact = Σ_v p log p/q. All three are per position, summed. With `rows`, each
    sequence's response tokens (the masked positions) and its exact KL summed over them are appended to it, as
    (token ids, kl): the per-step rollout log reads them there without another forward."""
    m = mask.bool()
    n = m.sum()
    if not int(n):
        return torch.zeros(4, dtype=torch.float64)
    exact, (logp, logq), per_position = _chunked_kl(policy_logits[m], reference_logits[m], 1.0, 512, tokens[m],
                                                    per_position=True)
    per_row = torch.zeros(m.shape[0], dtype=torch.float64).index_add_(
        0, m.nonzero()[:, 0].cpu(), per_position.double().cpu())
    if rows is not None:
        for ids, keep, kl in zip(tokens.tolist(), m.tolist(), per_row.tolist()):
            rows.append(([t for t, k in zip(ids, keep) if k], float(kl)))
    r = (logq - logp).double()
    return torch.stack([exact.double(), (-r).sum(), (r.exp() - 1 - r).sum(), n.double()]).cpu()


class KLAccumulator:
    """Sums of exact KL, k1 and k3 over the response tokens of one step's rollouts, as kl_sums returns them; `pop`
    gives each per token (total ÷ total tokens, over every process) and starts the next step at zero."""

    ESTIMATORS = ("exact", "k1", "k3")

    def __init__(self):
        self.sums = torch.zeros(4, dtype=torch.float64)

    def add(self, sums: torch.Tensor) -> None:
        self.sums += sums.to(self.sums)

    def pop(self, accelerator=None) -> dict[str, float] | None:
        """{"exact": …, "k1": …, "k3": …, "tokens": …} per token in nats, or None when nothing was captured."""
        sums, self.sums = self.sums, torch.zeros(4, dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        if sums[3] <= 0:
            return None
        per_token = (sums[:3] / sums[3]).tolist()
        return {**dict(zip(self.ESTIMATORS, per_token)), "tokens": int(sums[3])}


def response_batch(tokenizer, prompts: list, response_ids: list[list[int]], max_prompt_tokens: int):
    """Left-padded prompts followed by right-padded response token ids (as generated: no re-tokenising)."""
    batch, _ = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    width = max(1, max(len(r) for r in response_ids))
    n = len(prompts)
    resp = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    resp_mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(response_ids):
        if r:
            resp[i, :len(r)] = torch.tensor(r)
            resp_mask[i, :len(r)] = 1
    ids = torch.cat([batch["input_ids"], resp], 1)
    mask = torch.cat([batch["attention_mask"], resp_mask], 1)
    return ids, mask, resp_mask, batch["input_ids"].shape[1]


@torch.no_grad()
def response_logits(model, ids: torch.Tensor, mask: torch.Tensor, context: int) -> torch.Tensor:
    """The logits that predict each response position (fp32, on the CPU). The LM head runs at those positions only
    (logits_to_keep): over a 49k vocabulary it is a fifth of a small model's work per position, and the prompt's
    positions predict nothing that is measured."""
    device = next(model.parameters()).device
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                   logits_to_keep=ids.shape[1] - context + 1).logits
    return logits[:, :-1].float().cpu()


def length_order(tokenizer, prompts: list, response_ids: list[list[int]], max_prompt_tokens: int) -> list[int]:
    """Indices of the (prompt, response) pairs from shortest to longest in tokens: batches of neighbours in this
    order pad little (a batch is as wide as its longest prompt plus its longest response)."""
    batch, _ = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    prompt_len = batch["attention_mask"].sum(1).tolist()
    return sorted(range(len(prompts)), key=lambda i: prompt_len[i] + len(response_ids[i]))


def exact_kl_of_responses(use_policy, use_reference, tokenizer, prompts: list, response_ids: list[list[int]],
                          temperature: float = 1.0, batch_size: int = 16, max_prompt_tokens: int = 1024,
                          with_k1: bool = False):
    """Per response: (Σ exact KL(policy ‖ reference) over its tokens, its token count), on the tokens the policy
    generated (end-of-turn token included); with `with_k1`, also Σ k1 = log p − log q of those tokens, from the same
    log-softmax at the same temperature. `use_policy` / `use_reference` are context managers yielding a model
    (e.g. PolicySet.use bound to a name): each chunk enters one then the other, so two policies that share weights
    (an adapter and its base) never need to be held at once. Chunks are formed by length (length_order); the
    results come back in the given order."""
    n = len(prompts)
    sums, counts, k1 = [0.0] * n, [0] * n, [0.0] * n
    order = length_order(tokenizer, prompts, response_ids, max_prompt_tokens) if n > batch_size else list(range(n))
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        ids, mask, resp_mask, ctx = response_batch(tokenizer, [prompts[i] for i in rows],
                                                    [response_ids[i] for i in rows], max_prompt_tokens)
        with use_policy() as model:
            p_logits = response_logits(model, ids, mask, ctx)
        with use_reference() as model:
            q_logits = response_logits(model, ids, mask, ctx)
        tokens = ids[:, ctx:]
        for j, i in enumerate(rows):
            m = resp_mask[j].bool()
            if not bool(m.any()):
                continue
            kl, (logp, logq) = _chunked_kl(p_logits[j][m], q_logits[j][m], temperature, 512, tokens[j][m])
            sums[i], counts[i], k1[i] = float(kl), int(m.sum()), float((logp - logq).sum())
    return (sums, counts, k1) if with_k1 else (sums, counts)
