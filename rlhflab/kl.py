"""KL between policies on given responses: per-token log-probabilities and the per-token KL estimate."""
from __future__ import annotations

import torch

from rlhflab.generation import encode_prompts


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
