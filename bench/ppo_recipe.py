"""One demo PPO run with a recipe change, then a low-noise evaluation of the result against the base policy.

    python bench/ppo_recipe.py NAME --mode full [--seed 0] [--trl adam_epsilon=1e-5 --trl optim=sgd] [-- --lr 1e-5]
    python bench/ppo_recipe.py NAME --checkpoint checkpoints/ppo-lora     # evaluate an existing run, no training

(flags after -- go to training/ppo.py)

The training log's own "last pass minus first pass" compares two single samples per prompt (their
correlation is only about 0.3 with the demo reward model), so its 95 % interval is about ±0.45. This
script instead samples K responses per prompt from the trained policy and from the base (same seeds,
temperature 0.7, the demo's 32 tokens) on the 48 training and the 50 held-out prompts, and reports the
paired gain over the base with a 95 % bootstrap interval over prompts. Results are appended to
bench/ppo_recipe.jsonl. Needs the demo reward model (RLHFLAB_CHECKPOINTS or --reward-model).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import command, with_trl_args

RESULTS = HERE / "ppo_recipe.jsonl"


def sample_scores(model, tokenizer, reward_model, prompts: list[str], samples: int, max_new_tokens: int):
    """Mean reward-model score per prompt over `samples` seeded responses (seeds 100, 101, ...)."""
    import numpy as np

    from rlhflab.generation.sampling import GenerationSettings, generate_batch
    from rlhflab.measure.scoring import score_responses

    per_seed = []
    for k in range(samples):
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.7, seed=100 + k)
        texts = [g.text for g in generate_batch(model, tokenizer, prompts, settings, batch_size=len(prompts))]
        per_seed.append(score_responses(reward_model, tokenizer, prompts, texts, batch_size=32))
    return np.mean(per_seed, axis=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--mode", choices=("full", "lora"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl", action="append", default=[], help="TRL PPOConfig override KEY=VALUE (repeatable)")
    parser.add_argument("--reward-model", default=None)
    parser.add_argument("--samples", type=int, default=3, help="responses per prompt in the evaluation")
    parser.add_argument("--work", default="/tmp/ppo-recipe")
    parser.add_argument("--checkpoint", default=None,
                        help="skip training: evaluate this PPO checkpoint (e.g. what `make demo` built) on its own "
                             "training and held-out prompts, against the reward model it was trained with")
    args, ppo_args = parser.parse_known_args()  # the rest are training/ppo.py flags (after --)
    args.ppo_args = [a for a in ppo_args if a != "--"]

    import torch

    from rlhflab.config import CHECKPOINTS_DIR, PPOConfig, parse_config
    from rlhflab.data.oasst1 import read_prompts
    from rlhflab.measure.stats import paired_bootstrap_diff
    from rlhflab.models.loading import load_causal_lm, load_policy, load_reward_model
    from rlhflab.training.ppo import train_ppo

    reward = args.reward_model or str(CHECKPOINTS_DIR / "reward")
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.trl)}
    if args.checkpoint:
        out = Path(args.checkpoint)
        trained = json.loads((out / "training_config.json").read_text())
        args.mode, args.seed = trained["mode"], trained["seed"]
        reward = args.reward_model or trained["reward_model"]  # the one it was trained against
        cfg = parse_config(PPOConfig, ["--profile", trained["profile"], "--mode", args.mode,
                                       "--base-model", trained["base_model"],
                                       "--max-response-length", str(trained["max_response_length"])])
        train_s = None
    else:
        out = Path(args.work) / args.name
        cfg = parse_config(PPOConfig, ["--profile", "demo", "--mode", args.mode, "--reward-model", reward,
                                       "--output-dir", str(out), "--seed", str(args.seed), *args.ppo_args])
        started = time.perf_counter()
        train_ppo(cfg, trainer_class=with_trl_args(overrides))
        train_s = round(time.perf_counter() - started)

    train, held = read_prompts(out / "train_prompts.jsonl"), read_prompts(out / "heldout_prompts.jsonl")
    reward_model, tokenizer = load_reward_model(reward)
    # the base's scores depend on the prompts (the seed picks them) and on the reward model
    key = hashlib.sha1(f"{Path(reward).resolve()}|{train + held}".encode()).hexdigest()[:10]
    base_cache = Path(args.work) / f"base-scores-seed{args.seed}-{args.samples}-{key}.json"
    base_cache.parent.mkdir(parents=True, exist_ok=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if base_cache.is_file():
            base = json.loads(base_cache.read_text())
        else:
            base_model, _ = load_causal_lm(cfg.base_model)
            base = sample_scores(base_model, tokenizer, reward_model, train + held, args.samples,
                                 cfg.max_response_length).tolist()
            base_cache.write_text(json.dumps(base))
        policy, _ = load_policy(str(out))
        ours = sample_scores(policy, tokenizer, reward_model, train + held, args.samples, cfg.max_response_length)
    n = len(train)
    summary = json.loads((out / "ppo_info.json").read_text())["summary"]
    result = {
        "name": args.name, "mode": args.mode, "seed": args.seed, "trl_overrides": overrides, "ppo_args": args.ppo_args,
        "checkpoint": args.checkpoint, "reward_model": reward,
        "train_s": train_s, "kl_per_token_last_pass": round(summary["kl_per_token_last"], 4),
        "training_log_paired_gain": round(summary["paired_score_gain"]["mean"], 3),
        "eval_gain_train_prompts": [round(x, 3) for x in paired_bootstrap_diff(ours[:n], base[:n])],
        "eval_gain_heldout_prompts": [round(x, 3) for x in paired_bootstrap_diff(ours[n:], base[n:])],
        "samples_per_prompt": args.samples, "command": command(),
    }
    print(json.dumps(result), flush=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if __name__ == "__main__":
    main()
