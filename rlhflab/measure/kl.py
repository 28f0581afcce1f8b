"""KL between policies: the exact per-token KL over the vocabulary (the reference, SPEC §9) where both models'
logits are at hand, and the k1 estimate from per-token log-probabilities of given responses."""
from __future__ import annotations

import torch

from rlhflab.generation.sampling import encode_prompts


@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: list, responses: list[str], batch_size: int = 16,
                      max_prompt_tokens: int = 1024) -> list[torch.Tensor]:
    """Log-probability of each response token given its prompt (one 1-D tensor per response)."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk_p, chunk_r = prompts[start:start + batch_size], responses[start:start + batch_size]
        batch, _ = encode_prompts(tokenizer, chunk_p, max_prompt_tokens)
        resp_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id] for r in chunk_r]
        width = max(len(r) for r in resp_ids)
        n = len(chunk_p)
        resp = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
        resp_mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(resp_ids):  # right-pad responses after the left-padded prompts
            resp[i, :len(r)] = torch.tensor(r)
            resp_mask[i, :len(r)] = 1
        ids = torch.cat([batch["input_ids"], resp], 1).to(device)
        mask = torch.cat([batch["attention_mask"], resp_mask], 1).to(device)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits.float()
        ctx = batch["input_ids"].shape[1]
        logp = torch.log_softmax(logits[:, ctx - 1:-1], dim=-1).gather(-1, resp.to(device).unsqueeze(-1)).squeeze(-1)
        for i, r in enumerate(resp_ids):
            out.append(logp[i, :len(r)].cpu())
    return out


def kl_per_token(policy_logprobs: list[torch.Tensor], reference_logprobs: list[torch.Tensor]) -> list[float]:
    """Per-response KL estimate in nats per token: mean over the response's tokens of log p - log q.

    On samples drawn from the policy this is the k1 (unbiased) Monte-Carlo estimate of
    KL(policy || reference) per token — the same estimator TRL's PPO logs.
    """
    return [float((p - q).mean()) if p.numel() else 0.0 for p, q in zip(policy_logprobs, reference_logprobs)]


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
    from rlhflab.generation.sampling import encode_prompts

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
    """The logits that predict each response position (fp32, on the CPU)."""
    device = next(model.parameters()).device
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=position_ids.to(device)).logits
    return logits[:, context - 1:-1].float().cpu()


def exact_kl_of_responses(use_policy, use_reference, tokenizer, prompts: list, response_ids: list[list[int]],
                          temperature: float = 1.0, batch_size: int = 16,
                          max_prompt_tokens: int = 1024) -> tuple[list[float], list[int]]:
    """Per response: (Σ exact KL(policy ‖ reference) over its tokens, its token count), on the tokens the policy
    generated (end-of-turn token included). `use_policy` / `use_reference` are context managers yielding a model
    (e.g. PolicySet.use bound to a name): each chunk enters one then the other, so two policies that share weights
    (an adapter and its base) never need to be held at once."""
    sums: list[float] = []
    counts: list[int] = []
    for start in range(0, len(prompts), batch_size):
        chunk = response_ids[start:start + batch_size]
        ids, mask, resp_mask, ctx = response_batch(tokenizer, prompts[start:start + batch_size], chunk,
                                                    max_prompt_tokens)
        with use_policy() as model:
            p_logits = response_logits(model, ids, mask, ctx)
        with use_reference() as model:
            q_logits = response_logits(model, ids, mask, ctx)
        for i in range(len(chunk)):
            kl, n = exact_kl_sum(p_logits[i], q_logits[i], resp_mask[i], temperature)
            sums.append(float(kl))
            counts.append(int(n))
    return sums, counts
