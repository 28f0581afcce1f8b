"""PPO step time on equal work — plain TRL 1.12 against rlhflab's train_ppo — and one row per "less work" choice.

`python bench/bench_ppo.py [--steps 4] [--mode full|lora] [--variants rollouts,frozen_value,bf16,...]`
(needs checkpoints/reward; `--tiny` runs every path on a 2-block model in seconds, to check the code, not to measure).

Equal work: TRL's PPOTrainer driven directly (no rlhflab wrapper around it) and train_ppo with the demo profile and the
probe off, on the same models, frozen value blocks, value head, prompts, rollout batch, optimizer, learning rate and
precision (both under one torch bf16 autocast context where the CPU runs bf16 fast, else both fp32). Each side runs
`--steps` steps; the first is warm-up, the rest are timed (median and spread). The "less work" rows each change one
factor of train_ppo's demo run (the same baseline run) and state the factor's effect on results next to its time;
the "rollouts" row is the same work sampled two ways: the decode engine (ours) against generate() per chunk of
local_rollout_forward_batch_size, TRL's own sampler.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

from common import command, demo_ppo_run, machine, spread, tiny_models

VARIANTS = ("rollouts", "frozen_value", "bf16", "checkpointing", "value_head", "probe")
TINY = dict(lang=None, num_prompts=16, num_heldout=4, batch_size=4, mini_batch_size=4, max_prompt_length=96,
            max_response_length=8, probe_prompts=4, judge_model="")


def _timed_steps(seconds: list[float]) -> dict:
    """The spread of the steps after the first (warm-up: TRL's first-call setup, lazy allocations)."""
    timed = seconds[1:] or seconds
    return {**spread(timed), "warm_up_s": seconds[0], "all_s": seconds}


@contextlib.contextmanager
def _replaced(module, name: str, make):
    original = getattr(module, name)
    setattr(module, name, make(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def _enable_checkpointing(model):
    # use_reentrant=False: the reentrant variant drops the gradients of blocks whose inputs need none (frozen lower
    # value blocks feed the upper ones), and it is what TRL itself sets for its gradient_checkpointing flag.
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def ours(steps: int, checkpointing: bool = False, **cfg_overrides) -> dict:
    """rlhflab's train_ppo (demo profile + overrides) for `steps` steps: step times, with the resumable work-state saves
    taken out (plain TRL saves nothing mid-run) and reported apart, and the run's per-step results."""
    import rlhflab.training.online as online
    import rlhflab.training.ppo as ppo

    pending, saves_after = [0.0], {}

    def timed_save(original):
        def save(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                pending[0] += time.perf_counter() - t0
        return save

    def on_step(record):  # called after the step's save: a save lands in the next step's seconds_per_step
        saves_after[record["step"]], pending[0] = pending[0], 0.0

    with contextlib.ExitStack() as stack:
        stack.enter_context(_replaced(ppo, "save_atomically", timed_save))
        if checkpointing:
            # TRL 1.12's PPOTrainer never turns its gradient_checkpointing flag on (its train() replaces the Trainer
            # loop that would), so the policy and the value model get it directly.
            def policy_with_checkpointing(load):
                def policy(*args, **kwargs):
                    model, *rest = load(*args, **kwargs)
                    return (_enable_checkpointing(model), *rest)
                return policy

            def value_with_checkpointing(build):
                return lambda *args, **kwargs: _enable_checkpointing(build(*args, **kwargs))

            stack.enter_context(_replaced(online, "load_start_policy", policy_with_checkpointing))
            stack.enter_context(_replaced(ppo, "build_value_model", value_with_checkpointing))
        run = demo_ppo_run(on_step=on_step, max_steps=steps, **cfg_overrides)
    metrics = run["metrics"]
    seconds = [r["seconds_per_step"] - saves_after.get(r["step"] - 1, 0.0) for r in metrics]
    saves = [s for s in saves_after.values() if s > 0]
    return {"steps": _timed_steps(seconds), "save_s_per_save": spread(saves) if saves else None,
            "saves": len(saves), "results": _results(metrics), "overopt": run["overopt"],
            "value_trainable_params": run["info"]["value_trainable_params"],
            "value_total_params": run["info"]["value_total_params"], "optimizer": run["info"]["optimizer"],
            "bf16": run["info"]["bf16"]}


@contextlib.contextmanager
def generate_rollouts(chunk: int):
    """train_ppo's rollouts sampled as TRL samples them, generate() on chunks of `chunk` prompts, in place of the
    decode engine; the rest of the step (log-probs from one full forward, the KL capture) is unchanged."""
    import torch

    import rlhflab.training.online as online

    def sample(model, input_ids, attention_mask, settings, stop_ids, pad_id, generator=None):
        rows = []
        for i in range(0, input_ids.shape[0], chunk):
            out = model.generate(input_ids=input_ids[i:i + chunk], attention_mask=attention_mask[i:i + chunk],
                                 do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=settings.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id)
            rows.append(out[:, input_ids.shape[1]:])
        width = max(r.shape[1] for r in rows)
        return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad_id) for r in rows])

    with _replaced(online, "sample_responses", lambda original: sample):
        yield


def _start_rollouts(prompts: int, sample_in_bf16: bool | None, **cfg_overrides):
    """The demo's start policy and `prompts` of its training prompts with one response each, sampled as train_ppo
    samples (temperature, no top-k/top-p; under bf16 autocast when `sample_in_bf16`, as the config says when None):
    (cfg, model, the kind of decode engine that sampled, ids, mask, response mask, context) as rlhflab.measure.kl lays
    them out."""
    from rlhflab.config import PPOConfig, build_config
    from rlhflab.data.oasst1 import load_prompts, split_prompts
    from rlhflab.generation.engine import decode_engine
    from rlhflab.generation.sampling import GenerationSettings, generate_batch
    from rlhflab.measure.kl import response_batch
    from rlhflab.models.loading import load_causal_lm
    from rlhflab.models.precision import autocast
    from rlhflab.models.prompts import with_system

    cfg = build_config(PPOConfig, "demo", **cfg_overrides)
    model, tok = load_causal_lm(cfg.base_model)
    model.eval()
    train, _ = split_prompts(load_prompts(cfg.dataset, cfg.lang), cfg.num_prompts, cfg.num_heldout, cfg.seed)
    texts = [with_system(p, cfg.system_prompt) for p in train[:prompts]]  # asked as train_ppo asks them
    settings = GenerationSettings(temperature=cfg.temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                  max_new_tokens=cfg.max_response_length, seed=cfg.seed)
    with autocast(cfg.bf16 if sample_in_bf16 is None else sample_in_bf16):
        kind = decode_engine(model).kind
        response_ids = [g.token_ids or [] for g in generate_batch(model, tok, texts, settings, len(texts),
                                                                  cfg.max_prompt_length)]
    return (cfg, model, kind, *response_batch(tok, texts, response_ids, cfg.max_prompt_length))


def _logit_gap(p, q, ids, resp_mask, context) -> dict:
    """Two sets of response logits (at the sampling temperature) on the same tokens: the number of tokens, max and
    mean |Δ log-prob| of the sampled tokens (nats) and the exact KL(p ‖ q) per token."""
    import torch

    from rlhflab.measure.kl import kl_sums

    tokens, m = ids[:, context:], resp_mask.bool()
    diff = (torch.log_softmax(p, -1).gather(-1, tokens.unsqueeze(-1)) -
            torch.log_softmax(q, -1).gather(-1, tokens.unsqueeze(-1))).squeeze(-1)[m].abs()
    sums = kl_sums(p, q, tokens, m)
    return {"tokens": int(sums[3]), "max_abs_logprob_diff": float(diff.max()),
            "mean_abs_logprob_diff": float(diff.mean()), "kl": float(sums[0] / sums[3])}


def sampler_vs_forward_kl(prompts: int = 16, **cfg_overrides) -> dict:
    """What sampling on the engine changes in PPO's numbers: rollouts sampled from the start policy as train_ppo
    samples them (the engine, under the run's precision), then, on the same tokens, the next-token distribution
    of the engine's step (teacher-forced through its KV cache: what the tokens were drawn from) against the full
    forward pass PPO takes its log-probs from. Exact KL(engine ‖ forward) per token (Σ_v p log p/q, nats) and
    max/mean |Δ log-prob| of the sampled tokens."""
    from rlhflab.generation.engine import engine_logits
    from rlhflab.measure.kl import response_logits
    from rlhflab.models.precision import autocast

    cfg, model, kind, ids, mask, resp_mask, context = _start_rollouts(prompts, None, **cfg_overrides)
    with autocast(cfg.bf16):
        forward = response_logits(model, ids, mask, context) / cfg.temperature
        engine = engine_logits(model, ids, mask, context) / cfg.temperature
    gap = _logit_gap(engine, forward, ids, resp_mask, context)
    return {"engine": kind, "prompts": ids.shape[0], **{k: v for k, v in gap.items() if k != "kl"},
            "kl_exact_engine_forward_per_token": gap["kl"]}


def _results(metrics: list[dict]) -> dict:
    """What a factor could change in a short run: the losses, score and KL of each step."""
    keys = ("value_loss", "policy_loss", "score", "kl_exact_per_token", "kl_per_token", "response_tokens_mean")
    return {k: [r.get(k) for r in metrics] for k in keys}


def plain_trl(steps: int, **cfg_overrides) -> dict:
    """TRL 1.12's PPOTrainer driven directly with the same work as train_ppo's demo run: the same models (loaded
    by the same loaders), frozen value blocks and value head, prompts, batch plan, optimizer, learning rate and KL
    settings; bf16 as one torch autocast context around train() (TRL's own bf16 flag is a no-op in 1.12)."""
    import datasets
    import torch
    from transformers import TrainerCallback

    from rlhflab.config import PPOConfig, build_config
    from rlhflab.models.hardware import best_device
    from rlhflab.models.loading import load_causal_lm, load_reward_model, lora_target_modules, model_path
    from rlhflab.models.precision import autocast_dtype, clear_autocast_cache_after_steps
    from rlhflab.training.online import prepare_prompts
    from rlhflab.training.ppo import build_value_model, ppo_batch_plan
    from rlhflab.training.trl_ppo import trl_ppo_module

    cfg = build_config(PPOConfig, "demo", max_steps=steps, **cfg_overrides)
    torch.manual_seed(cfg.seed)
    reward_model, _ = load_reward_model(cfg.reward_model)
    policy, tokenizer = load_causal_lm(cfg.base_model)
    value_model = build_value_model(model_path(cfg.reward_model), cfg.value_freeze_layers, tokenizer.pad_token_id,
                                    zero_head=cfg.value_head == "zero")
    _, _, queries = prepare_prompts(cfg, tokenizer)
    plan = ppo_batch_plan(cfg.batch_size, cfg.mini_batch_size, len(queries), cfg.epochs, max_steps=cfg.max_steps)
    amp_dtype = autocast_dtype(cfg.bf16, best_device())
    lora = cfg.mode == "lora"
    TRLPPOConfig, PPOTrainer = trl_ppo_module().PPOConfig, trl_ppo_module().PPOTrainer
    records = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):  # TRL logs once per PPO step
            if logs and "objective/kl" in logs:
                now = time.perf_counter()
                records.append({"seconds_per_step": now - self.last, "value_loss": logs.get("loss/value_avg"),
                                "policy_loss": logs.get("loss/policy_avg"), "score": logs.get("objective/scores")})
                self.last = now

    with tempfile.TemporaryDirectory() as tmp:
        args = TRLPPOConfig(
            output_dir=tmp, learning_rate=cfg.lora_lr if lora and cfg.lora_lr else cfg.lr,
            num_ppo_epochs=cfg.ppo_epochs, per_device_train_batch_size=plan["per_device_train_batch_size"],
            gradient_accumulation_steps=plan["gradient_accumulation_steps"],
            local_rollout_forward_batch_size=plan["local_rollout_forward_batch_size"],
            num_mini_batches=plan["num_mini_batches"], total_episodes=plan["steps"] * cfg.batch_size,
            response_length=cfg.max_response_length, temperature=cfg.temperature, stop_token="eos",
            kl_coef=cfg.kl_coef, lam=cfg.gae_lambda, missing_eos_penalty=cfg.missing_eos_penalty, seed=cfg.seed,
            bf16=amp_dtype is not None, fp16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
            num_sample_generations=0, save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
            optim=cfg.lora_optim if lora and cfg.lora_optim else cfg.optim)
        peft_config = None
        if lora:
            from peft import LoraConfig

            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                     target_modules=lora_target_modules(policy), task_type="CAUSAL_LM", bias="none")
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                             reward_model=reward_model, train_dataset=datasets.Dataset.from_dict({"input_ids": queries}),
                             value_model=value_model, peft_config=peft_config, callbacks=[StepTimes()])
        precision = contextlib.nullcontext()
        if amp_dtype is not None:
            # the same fix train_ppo applies (without it every later forward would use the step-0 weights)
            clear_autocast_cache_after_steps(trainer.optimizer)
            precision = torch.autocast(best_device().type, dtype=amp_dtype)
        with precision:
            trainer.train()
    return {"steps": _timed_steps([r["seconds_per_step"] for r in records]),
            "results": {k: [r[k] for r in records] for k in ("value_loss", "policy_loss", "score")},
            "bf16": amp_dtype is not None}


def bf16_logprob_effect(prompts: int = 8, **cfg_overrides) -> dict:
    """What bf16 autocast changes in the numbers PPO uses, at step 1: rollouts sampled once (fp32) from the start
    policy, then every response token's log-prob and next-token distribution computed in fp32 and under bf16
    autocast on the same sequences. Max and mean |Δ log-prob| of the sampled tokens (nats), and the exact KL
    (Σ_v p log p/q over the vocabulary, fp32 ‖ bf16) per token at the sampling temperature."""
    from rlhflab.measure.kl import response_logits
    from rlhflab.models.precision import autocast, autocast_dtype

    if autocast_dtype(True) is None:
        return {"note": "this CPU has no fast bf16: both sides run fp32"}
    cfg, model, _, ids, mask, resp_mask, context = _start_rollouts(prompts, False, **cfg_overrides)
    fp32 = response_logits(model, ids, mask, context) / cfg.temperature
    with autocast(True):
        bf16 = response_logits(model, ids, mask, context) / cfg.temperature
    gap = _logit_gap(fp32, bf16, ids, resp_mask, context)
    return {"prompts": ids.shape[0], **{k: v for k, v in gap.items() if k != "kl"},
            "kl_exact_fp32_bf16_per_token": gap["kl"]}


def _variant(name: str, steps: int, demo: dict, base: dict, cfg: dict) -> dict:
    """One "less work" row: train_ppo with only one factor of the baseline run changed (the other side)."""
    frozen = demo["value_freeze_layers"]
    if name == "rollouts":
        with generate_rollouts(demo["mini_batch_size"]):
            other = ours(steps, **cfg)
        effect = sampler_vs_forward_kl(**cfg)
        return {"factor": f"rollouts sampled on the decode engine, the whole batch in one call (ours) vs generate() "
                          f"per chunk of {demo['mini_batch_size']} (TRL's sampler)", "without": other,
                "without_label": "generate() per chunk", "with_label": "decode engine (demo)",
                "effect": (f"same distribution up to rounding: on {effect['tokens']} rollout tokens the engine's "
                           f"{effect['engine']} step vs the forward pass PPO takes log-probs from: exact KL "
                           f"{_tiny(effect['kl_exact_engine_forward_per_token'])} nats/token, max |Δ log-prob| "
                           f"{effect['max_abs_logprob_diff']:.4f} nats (mean {effect['mean_abs_logprob_diff']:.5f})"),
                "sampler_effect": effect}
    if name == "frozen_value":
        other = ours(steps, **{**cfg, "value_freeze_layers": 0})
        v, b = other["results"]["value_loss"], base["results"]["value_loss"]
        return {"factor": f"value model: lower {frozen} blocks and embeddings frozen (ours) vs every block trains",
                "without": other, "without_label": "every value block trains",
                "with_label": f"value blocks 1-{frozen} frozen (demo)",
                "effect": f"value loss at step {len(b)}: {b[-1]:.4f} frozen vs {v[-1]:.4f} all trainable "
                          f"(mean over the {len(b)} steps {_mean(b):.4f} vs {_mean(v):.4f}); trainable value "
                          f"parameters {base['value_trainable_params']:,} vs {other['value_trainable_params']:,}"}
    if name == "bf16":
        other = ours(steps, **{**cfg, "bf16": False})
        effect = bf16_logprob_effect(**cfg)
        k_b, k_f = base["results"]["kl_exact_per_token"][0], other["results"]["kl_exact_per_token"][0]
        text = (f"step-1 exact KL to the reference {_f(k_b)} (bf16) vs {_f(k_f)} (fp32) nats/token")
        if "tokens" in effect:
            text += (f"; same {effect['tokens']} rollout tokens in fp32 and bf16: max |Δ log-prob| "
                     f"{effect['max_abs_logprob_diff']:.4f} nats (mean {effect['mean_abs_logprob_diff']:.5f}), exact "
                     f"KL(fp32 ‖ bf16) {_tiny(effect['kl_exact_fp32_bf16_per_token'])} nats/token")
        return {"factor": "bf16 autocast (ours) vs fp32", "without": other,
                "without_label": "fp32 (and no extra rollout forward: generate()'s fp32 logits match a forward pass)",
                "with_label": "bf16 autocast (demo)", "effect": text, "logprob_effect": effect}
    if name == "checkpointing":
        other = ours(steps, checkpointing=True, **cfg)
        p, q = base["results"], other["results"]
        same = all(_close(a, b) for k in ("value_loss", "policy_loss") for a, b in zip(p[k], q[k]))
        return {"factor": "no gradient checkpointing (ours) vs gradient checkpointing on the policy and value model",
                "without": other, "without_label": "gradient checkpointing (backward recomputes each block's forward)",
                "with_label": "no checkpointing (demo)",
                "effect": "no effect on results: same computation, activations recomputed instead of kept"
                          + (f" (policy and value losses of all {len(p['value_loss'])} steps equal to 1e-4)" if same else
                             f" (losses differ by rounding: value loss at step {len(p['value_loss'])} "
                             f"{_f(p['value_loss'][-1])} vs {_f(q['value_loss'][-1])})")}
    if name == "value_head":
        other = ours(steps, **{**cfg, "value_head": "reward"})
        v, b = other["results"]["value_loss"], base["results"]["value_loss"]
        return {"factor": "value head starts at zero (ours) vs the reward model's head", "without": other,
                "without_label": "reward model's head", "with_label": "zero head (demo)",
                "effect": f"same computation (only the head's start differs); value loss at step {len(b)}: {b[-1]:.4f} "
                          f"zero head vs {v[-1]:.4f} reward head (mean {_mean(b):.4f} vs {_mean(v):.4f})"}
    if name == "probe":
        every = demo["probe_every"] or 4
        other = ours(steps, **{**cfg, "probe_every": every})
        probes = [p["seconds"] for p in other["overopt"] if "seconds" in p]
        cost = spread(probes[1:] or probes) if probes else None  # the first probe also pays first-call setup
        text = "no effect on training: the probe forks the RNG and only reads the models"
        if cost:
            text += (f"; one probe ({other['overopt'][0]['n_prompts']} held-out prompts: generate, exact KL, reward "
                     f"model{' and judge' if other['overopt'][0].get('judge_model') else ''}) {cost['median']:.1f} s "
                     f"[{cost['min']:.1f}–{cost['max']:.1f}], every {every} steps: {cost['median'] / every:.1f} s/step")
        return {"factor": f"probe off (equal-work runs) vs the over-optimisation probe every {every} steps",
                "without": other, "without_label": f"probe every {every} steps (demo default)",
                "with_label": "probe off", "effect": text, "probe_s": cost, "probe_every": every,
                "first_probe_s": probes[0] if probes else None,
                "probe_s_per_step": cost["median"] / every if cost else None}
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _tiny(x: float) -> str:
    return "< 1e-6" if abs(x) < 1e-6 else f"{x:.2e}"  # summed in fp32: values this small are rounding, sign included


def _f(x):
    return "n/a" if x is None else f"{x:.4f}"


def _close(a, b, tol: float = 1e-4) -> bool:
    return a is not None and b is not None and abs(a - b) <= tol * max(1.0, abs(a))


def run(steps: int = 4, mode: str = "full", reward_model: str | None = None, variants=VARIANTS,
        overrides: dict | None = None) -> dict:
    from rlhflab.config import CHECKPOINTS_DIR, PPOConfig, profile_defaults

    if steps < 2:
        raise ValueError("--steps must be at least 2: the first step is warm-up, the rest are timed")
    cfg = {"mode": mode, "reward_model": reward_model or str(CHECKPOINTS_DIR / "reward"), **(overrides or {})}
    demo = {**profile_defaults(PPOConfig, "demo"), **cfg}
    cfg_ours = {**cfg, "probe_every": 0}  # the probe is extra work plain TRL does not do: its cost is a row of its own
    plain = plain_trl(steps, **cfg_ours)
    base = ours(steps, **cfg_ours)
    lr = demo["lora_lr"] if mode == "lora" and demo["lora_lr"] else demo["lr"]
    optim = demo["lora_optim"] if mode == "lora" and demo["lora_optim"] else demo["optim"]
    work = (f"{mode}, {demo['batch_size']} rollouts x {demo['max_response_length']} tokens, {demo['ppo_epochs']} PPO "
            f"epoch(s), {'bf16 autocast' if base['bf16'] else 'fp32'}, value blocks 1-{demo['value_freeze_layers']} "
            f"frozen, {demo['value_head']} value head, {optim} lr {lr:g}")
    result = {
        "benchmark": f"PPO step, equal work ({work})", "mode": mode, "steps_per_run": steps, "warm_up_steps": 1,
        "precision": "bf16 autocast" if base["bf16"] else "fp32",
        "equal_work": {
            "work": work,
            "baseline": "plain TRL 1.12 PPOTrainer driven directly (one autocast context around train())",
            "baseline_steps": plain["steps"], "baseline_results": plain["results"],
            "ours": "rlhflab train_ppo, demo profile, probe off (rollouts sampled on the decode engine, the whole batch "
                    "in one call; adds: rollout log-probs from one full no-grad forward, exact KL from the logits TRL "
                    "computes, EOS closing of unfinished responses)",
            "ours_steps": base["steps"], "ours_results": base["results"],
            "ours_save_s_per_save": base["save_s_per_save"], "ours_saves": base["saves"],
            "speedup": plain["steps"]["median"] / base["steps"]["median"]},
        "less_work": [], "machine": machine(), "command": command()}
    if "bf16" in variants and not base["bf16"]:  # both sides would run the same fp32 steps: no row to measure
        variants = [v for v in variants if v != "bf16"]
        result["skipped"] = {"bf16": "this CPU has no native bf16: the demo runs fp32, so there is no bf16 side"}
    for name in variants:
        row = _variant(name, steps, demo, base, cfg_ours)
        other = row.pop("without")
        speedup = other["steps"]["median"] / base["steps"]["median"]
        # The ratio is always that of the two step times the row prints. The probe runs between steps (at step 0 and
        # every probe_every steps), mostly outside the timed ones: its own time is in the row's effect text and in
        # probe_s_per_step (its time spread over the steps between probes), never folded into this ratio.
        row.update(name=name, without_steps=other["steps"], with_steps=base["steps"], without_results=other["results"],
                   speedup=speedup)
        result["less_work"].append(row)
        print(f"{name}: {row['speedup']:.2f}x; {row['effect']}", flush=True)
    print(json.dumps(result, indent=2, default=str))
    return result


def _variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)} (or none)")
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is warm-up, the rest are timed")
    parser.add_argument("--mode", default="full", choices=("full", "lora"))
    parser.add_argument("--variants", type=lambda t: [] if t == "none" else _variants(t), default=list(VARIANTS),
                        help=f"'less work' rows to run, comma-separated: {','.join(VARIANTS)} (or none)")
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-block model and 4 rollouts of 8 tokens: checks every path in seconds, measures nothing")
    a = parser.parse_args()
    if a.steps < 2:
        parser.error("--steps must be at least 2: the first step is warm-up, the rest are timed")
    if a.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            run(a.steps, a.mode, variants=a.variants, overrides={**TINY, **tiny_models(Path(tmp))})
    else:
        run(a.steps, a.mode, variants=a.variants)
