"""The one place a reward is computed: reward-model inputs, batched scoring, preference probability."""
from __future__ import annotations

import math

import torch

from rlhflab.models.prompts import format_prompt

DEFAULT_MAX_LENGTH = 512


def response_suffix(tokenizer, response: str) -> str:
    """How a finished response follows its formatted prompt.

    Chat-templated models end the turn with EOS (<|im_end|>), exactly what a PPO rollout that
    stops produces, so the reward model sees the same tokens in training, PPO and the app.
    """
    if getattr(tokenizer, "chat_template", None):
        return response.strip() + (tokenizer.eos_token or "")
    return " " + response.strip()


def encode_for_reward(tokenizer, prompt, response: str, max_length: int = DEFAULT_MAX_LENGTH) -> list[int]:
    """Token ids of prompt + response; the prompt is cut from the left so the response always fits."""
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response_suffix(tokenizer, response), add_special_tokens=False)["input_ids"]
    response_ids = response_ids[: max(1, max_length * 3 // 4)]
    keep = max_length - len(response_ids)
    return prompt_ids[-keep:] + response_ids


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask


def reward_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per sequence (the value of the head at the last real token)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits.squeeze(-1).float()


@torch.no_grad()
def score_responses(model, tokenizer, prompts: list, responses: list[str], batch_size: int = 16,
                    max_length: int = DEFAULT_MAX_LENGTH) -> list[float]:
    """Reward-model score of each (prompt, response) pair."""
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses must have the same length")
    device = next(model.parameters()).device
    seqs = [tuple(encode_for_reward(tokenizer, p, r, max_length)) for p, r in zip(prompts, responses)]
    # Each distinct sequence is scored once, so two policies that gave the same answer to a prompt tie exactly (in
    # different batches their padding would make the scores differ in the last bits and turn the tie into a win or a
    # loss); batches of neighbours in length pad little; the scores come back in the given order.
    unique = sorted(set(seqs), key=len)
    score_of: dict[tuple, float] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        ids, mask = left_pad([list(s) for s in chunk], tokenizer.pad_token_id)
        score_of.update(zip(chunk, reward_forward(model, ids.to(device), mask.to(device)).tolist()))
    return [score_of[s] for s in seqs]


def preference_probability(reward_a: float, reward_b: float) -> float:
    """P(a preferred over b) = sigmoid(r_a - r_b) under the Bradley-Terry model."""
    return 1.0 / (1.0 + math.exp(-(reward_a - reward_b)))
