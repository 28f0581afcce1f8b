"""How long the embedded base model's answers are, to pick the demo's token budgets (issue 25, item 2).

    python bench/answer_lengths.py [--prompts 32] [--max-new-tokens 256] [--no-system]

The base (smollm2-135m-instruct, embedded) answers the first N of the demo's held-out prompts (the PPO/GRPO demo split:
data/demo/oasst1.jsonl, English, seed 42, 50 held out) once each, sampling as the trainers do (temperature 0.7
alone: top-k 0, top-p 1.0, repetition penalty 1.0), up to --max-new-tokens, asked with the demo's system message
(rlhflab.config.DEMO_SYSTEM_PROMPT; --no-system: the chat template's own default, as before issue 25's budgets). Because decoding is sequential, an answer
finishes under a budget B exactly when it finished within B tokens here, so one run gives the cut rate of every
budget up to the maximum; each with a Wilson 95 % interval. Prints the raw lengths too.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import command, machine

BUDGETS = (32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-system", dest="system", action="store_false", help="ask without the demo's system message")
    args = p.parse_args(argv)
    import torch

    from rlhflab.config import PPOConfig, build_config
    from rlhflab.data.oasst1 import load_prompts, split_prompts
    from rlhflab.generation.sampling import GenerationSettings, generate_batch
    from rlhflab.measure.stats import wilson_interval
    from rlhflab.models.loading import load_causal_lm
    from rlhflab.models.prompts import with_system

    torch.set_num_threads(1)
    cfg = build_config(PPOConfig, "demo")
    _, heldout = split_prompts(load_prompts(cfg.dataset, cfg.lang), cfg.num_prompts, cfg.num_heldout, cfg.seed)
    system = cfg.system_prompt if args.system else None
    prompts = [with_system(p, system) for p in heldout[:args.prompts]]
    t0 = time.perf_counter()
    model, tok = load_causal_lm("smollm2-135m-instruct")[:2]
    load_s = time.perf_counter() - t0
    settings = GenerationSettings(temperature=cfg.temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                  max_new_tokens=args.max_new_tokens, seed=args.seed)
    t0 = time.perf_counter()
    gens = generate_batch(model, tok, prompts, settings, batch_size=len(prompts))
    gen_s = time.perf_counter() - t0
    lengths = [g.num_tokens if g.finished else None for g in gens]  # None: not finished within the maximum
    print(f"command: {command()}\nmachine: {machine()}\n{len(prompts)} held-out prompts, base model, temperature "
          f"{cfg.temperature} alone, system message {system!r}, up to {args.max_new_tokens} new tokens, seed {args.seed}; load {load_s:.0f} s, "
          f"generation {gen_s:.0f} s (one batch, 1 thread)")
    print("finished lengths (tokens, end-of-turn included; None = cut at the maximum):", lengths)
    print("| budget (new tokens) | cut | cut rate [95 % Wilson] |\n|---|---|---|")
    for b in (b for b in BUDGETS if b <= args.max_new_tokens):
        cut = sum(1 for n in lengths if n is None or n > b)
        rate, lo, hi = wilson_interval(cut, len(lengths))
        print(f"| {b} | {cut}/{len(lengths)} | {100 * rate:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
