"""GRPO step time on equal work: plain TRL 1.12's GRPOTrainer against rlhflab's train_grpo.

`python bench/bench_grpo.py [--steps 4] [--mode full|lora]` (needs checkpoints/reward; `--tiny` runs both paths on a
2-block model in seconds, to check the code, not to measure).

Equal work: TRL's GRPOTrainer driven directly (no rlhflab wrapper: TRL's own prompt tokenization, its generate()
sampling, its own reference copy for the KL term) and train_grpo with the demo profile and the probe off, on the
same policy, reward model, prompts as asked (the profile's system message), batch plan (prompts x generations per
step, micro-batches), optimizer, learning rate, KL coefficient, rollout length and precision (both under one torch
bf16 autocast context where the CPU runs bf16 fast, else both fp32). Each side runs `--steps` steps; the first is
warm-up, the rest are timed (median and spread). train_grpo's step also writes every rollout to rollouts.jsonl and
its metrics record, and saves the Trainer checkpoint every fifth of the run, as a real run does; plain TRL saves
nothing (save_strategy "no").
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

from common import command, machine, spread, tiny_models

TINY = dict(lang=None, num_prompts=16, num_heldout=4, batch_size=2, num_generations=2, max_prompt_length=96,
            max_response_length=8, judge_model="")


def _timed_steps(seconds: list[float]) -> dict:
    """The spread of the steps after the first (warm-up: TRL's first-call setup, lazy allocations)."""
    timed = seconds[1:] or seconds
    return {**spread(timed), "warm_up_s": seconds[0], "all_s": seconds}


def _config(steps: int, **overrides):
    from rlhflab.config import GRPOConfig, build_config

    return build_config(GRPOConfig, "demo", max_steps=steps, probe_every=0, **overrides)


def ours(steps: int, **overrides) -> dict:
    """rlhflab's train_grpo (demo profile + overrides, probe off) for `steps` steps: each step's seconds."""
    from rlhflab.models.precision import runs_bf16
    from rlhflab.training.grpo import train_grpo

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(steps, output_dir=str(Path(tmp) / "grpo"), **overrides)
        train_grpo(cfg, on_step=records.append)
    return {"steps": _timed_steps([r["seconds_per_step"] for r in records]),
            "scores": [r.get("score") for r in records],
            "bf16": runs_bf16(cfg.bf16)}  # what ran, not what was asked


def plain_trl(steps: int, **overrides) -> dict:
    """TRL 1.12's GRPOTrainer driven directly with train_grpo's work (see the module's docstring)."""
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from rlhflab.measure.scoring import score_responses
    from rlhflab.models.hardware import best_device
    from rlhflab.models.loading import load_causal_lm, load_reward_model
    from rlhflab.models.precision import autocast_dtype
    from rlhflab.models.prompts import format_prompt, with_system
    from rlhflab.training.grpo import grpo_batch_plan, lora_config, trl_grpo_args
    from rlhflab.training.online import prepare_prompts

    cfg = _config(steps, **overrides)
    torch.manual_seed(cfg.seed)
    reward_model, reward_tok = load_reward_model(cfg.reward_model)
    policy, tokenizer = load_causal_lm(cfg.base_model)
    train, _, _ = prepare_prompts(cfg, tokenizer)
    asked = [with_system(p, cfg.system_prompt) for p in train]
    plan = grpo_batch_plan(cfg.batch_size, cfg.num_generations, len(train), cfg.epochs, 1, cfg.max_steps)
    amp_dtype = autocast_dtype(cfg.bf16, best_device())
    records = []

    def reward(prompts, completions, query, **kw) -> list[float]:
        return score_responses(reward_model, reward_tok, list(query), list(completions))

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            records.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        args = trl_grpo_args(cfg, plan, Path(tmp))
        args.beta = cfg.kl_coef  # TRL's own KL term: it loads its own reference copy of the policy
        args.save_strategy, args.report_to, args.disable_tqdm = "no", [], True
        data = datasets.Dataset.from_dict({"prompt": [format_prompt(tokenizer, p) for p in asked], "query": asked})
        trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=data,
                              processing_class=tokenizer, callbacks=[StepTimes()],
                              peft_config=lora_config(cfg, policy) if cfg.mode == "lora" else None)
        precision = (torch.autocast(best_device().type, dtype=amp_dtype) if amp_dtype is not None
                     else contextlib.nullcontext())
        with precision:
            trainer.train()
    return {"steps": _timed_steps(records), "bf16": amp_dtype is not None}


def run(steps: int = 4, mode: str = "full", reward_model: str | None = None, overrides: dict | None = None) -> dict:
    from rlhflab.config import CHECKPOINTS_DIR, GRPOConfig, profile_defaults

    if steps < 2:
        raise ValueError("--steps must be at least 2: the first step is warm-up, the rest are timed")
    cfg = {"mode": mode, "reward_model": reward_model or str(CHECKPOINTS_DIR / "reward"), **(overrides or {})}
    demo = {**profile_defaults(GRPOConfig, "demo"), **cfg}
    plain = plain_trl(steps, **cfg)
    base = ours(steps, **cfg)
    lr = demo["lora_lr"] if mode == "lora" and demo["lora_lr"] else demo["lr"]
    work = (f"{mode}, {demo['batch_size']} prompts x {demo['num_generations']} responses x "
            f"{demo['max_response_length']} tokens, {'bf16 autocast' if base['bf16'] else 'fp32'}, lr {lr:g}, "
            f"KL coefficient {demo['kl_coef']:g}")
    result = {
        "benchmark": f"GRPO step, equal work ({work})", "mode": mode, "steps_per_run": steps, "warm_up_steps": 1,
        "precision": "bf16 autocast" if base["bf16"] else "fp32",
        "equal_work": {
            "work": work,
            "baseline": "plain TRL 1.12 GRPOTrainer driven directly (its generate() sampling, its own reference; one "
                        "autocast context around train())",
            "baseline_steps": plain["steps"],
            "ours": "rlhflab train_grpo, demo profile, probe off (rollouts on the decode engine; adds: the rollout log, "
                    "the metrics record, a Trainer checkpoint every fifth of the run)",
            "ours_steps": base["steps"], "ours_scores": base["scores"],
            "speedup": plain["steps"]["median"] / base["steps"]["median"]},
        "machine": machine(), "command": command()}
    print(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is warm-up, the rest are timed")
    parser.add_argument("--mode", default="full", choices=("full", "lora"))
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-block model and 2 prompts x 2 responses of 8 tokens: checks both paths in seconds")
    a = parser.parse_args()
    if a.steps < 2:
        parser.error("--steps must be at least 2: the first step is warm-up, the rest are timed")
    if a.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            run(a.steps, a.mode, overrides={**TINY, **tiny_models(Path(tmp))})
    else:
        run(a.steps, a.mode)
