"""What a PPO value model that starts as the reward model predicts along a response, against the rewards.

    python bench/value_probe.py [--reward-model checkpoints/reward] [--prompts 16] [--tokens 32]

TRL's PPO starts the value model from the reward model, so at step 1 the value of every response
position is the reward head read in the middle of a response. The reward model was trained on
finished responses only. This script samples one response to each of the first N English prompts of
the embedded oasst1 stand-in (data/demo/oasst1.jsonl) from the base policy
(temperature 0.7, as in the demo's rollouts), reads the head at every response position the way TRL
does, and compares how much those values swing within a response with how much the final rewards
differ between responses. Where the swing is as large as the reward spread, the per-token advantages
of early tokens are mostly that swing (the demo profile's `--value-head zero` exists for this).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import command, machine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", default=None)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import torch

    from rlhflab.config import CHECKPOINTS_DIR, DEFAULT_BASE_MODEL, DEMO_DATA_DIR
    from rlhflab.data.oasst1 import load_prompts
    from rlhflab.generation.sampling import GenerationSettings, generate_batch
    from rlhflab.measure.scoring import response_suffix, score_responses
    from rlhflab.models.loading import load_causal_lm, load_reward_model
    from rlhflab.models.prompts import format_prompt

    reward_path = args.reward_model or str(CHECKPOINTS_DIR / "reward")
    reward_model, tokenizer = load_reward_model(reward_path)
    policy, _ = load_causal_lm(args.base_model or DEFAULT_BASE_MODEL)
    prompts = load_prompts(str(DEMO_DATA_DIR / "oasst1.jsonl"), "en")[: args.prompts]
    settings = GenerationSettings(max_new_tokens=args.tokens, temperature=0.7, seed=args.seed)
    texts = [g.text for g in generate_batch(policy, tokenizer, prompts, settings, batch_size=len(prompts))]
    rewards = np.array(score_responses(reward_model, tokenizer, prompts, texts))  # finished: EOS appended
    swings, means = [], []
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    with torch.no_grad():
        for prompt, text in zip(prompts, texts):
            prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
            # the response as PPO's value model sees it mid-rollout: no EOS
            response_ids = tokenizer(response_suffix(tokenizer, text).removesuffix(tokenizer.eos_token or ""),
                                     add_special_tokens=False)["input_ids"][: args.tokens]
            hidden = backbone(input_ids=torch.tensor([prompt_ids + response_ids])).last_hidden_state
            values = reward_model.score(hidden).squeeze(-1)[0, len(prompt_ids) - 1: -1].float().numpy()
            swings.append(values.std())
            means.append(values.mean())
    result = {
        "benchmark": "reward head read along base responses (the value model at PPO step 1)",
        "reward_model": reward_path, "responses": len(prompts), "tokens": args.tokens,
        "final_reward_mean": round(float(rewards.mean()), 3),
        "final_reward_sd_between_responses": round(float(rewards.std()), 3),
        "value_mean": round(float(np.mean(means)), 3),
        "value_sd_within_a_response_mean": round(float(np.mean(swings)), 3),
        "machine": machine(), "command": command(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
