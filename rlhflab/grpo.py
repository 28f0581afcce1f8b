"""GRPO and RLOO training against the frozen reward model: the one module that touches TRL's GRPOTrainer and
RLOOTrainer (trl==1.12.0).

Around TRL it adds what PPO has (rlhflab.ppo): the same prompts and held-out split, the reward computed the one
way the lab computes it (rlhflab.scoring.score_responses), a metrics log with PPO's field names and units, resume
after a kill, and a checkpoint whose card says what it is.

TRL's GRPO and RLOO keep the KL coefficient (`beta`) fixed: neither has an adaptive controller. Here the same
controller as PPO's (rlhflab.ppo.AdaptiveKLController, Ziegler et al. 2019) moves `trainer.beta`, the attribute
their losses read, after every step from the KL per token that step logged.

The KL each logs is an estimate from the sampled tokens, not the exact sum over the vocabulary:
- GRPO: k3 = exp(r) - r - 1 with r = log pi_ref - log pi per token (Schulman's estimator, >= 0), taken in the loss
  on the step's own samples, before the update (one optimisation pass per batch);
- RLOO: k1 = log pi - log pi_ref per token, as PPO logs it.
The exact KL (sum_v p log p/q) would need both models' full logits at once; TRL computes the policy's and the
reference's log-probs in separate passes and keeps only the sampled token's, so it would cost a third forward
pass (or the reference's logits for the whole batch in memory) per step. The evaluation measures it instead.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
from pathlib import Path

import torch

from rlhflab.checkpoints import METRICS_FILE, Timer, command_line, markdown_table, read_jsonl, write_json
from rlhflab.config import GRPOConfig
from rlhflab.data.oasst1 import load_prompts, save_prompts
from rlhflab.errors import UserError
from rlhflab.models import autocast, autocast_dtype, best_device, count_parameters, format_prompt, load_reward_model
from rlhflab.policy_training import (POLICY_METHODS, is_stand_in, learning_rate, load_start_policy, lora_config,
                                     policy_output_dir, prepare_resume, save_policy_checkpoint,
                                     trainer_metrics_callback)
from rlhflab.ppo import (HELDOUT_FILE, TRAIN_PROMPTS_FILE, AdaptiveKLController, _frozen_block_linears_to,
                         prepare_prompts, prompt_key)
from rlhflab.ppo_metrics import KL_BAND, format_gain, run_summary_table, summarize_metrics
from rlhflab.scoring import score_responses

KL_ESTIMATORS = {"grpo": "k3", "rloo": "k1"}
KL_STATE_FILE = "kl_controller.json"  # the KL coefficient for the next step, saved inside each Trainer checkpoint
MAX_MICRO_BATCH = 16  # completions per forward/backward pass; more per step are accumulated


# ---------------------------------------------------------------- batch arithmetic
def grpo_batch_plan(batch_size: int, num_generations: int, num_prompts: int, epochs: int, world_size: int = 1,
                    max_steps: int | None = None) -> dict:
    """TRL 1.12 arguments for `batch_size` prompts per optimizer step, each with `num_generations` responses.

    TRL: completions per step = per_device_train_batch_size x gradient_accumulation_steps x processes, generated
    at once (steps_per_generation = gradient_accumulation_steps) and split into backward passes of
    per_device_train_batch_size; steps = ceil(epochs x prompts / batch_size).
    """
    completions = batch_size * num_generations
    if completions % world_size:
        raise UserError(f"--batch-size {batch_size} x --num-generations {num_generations} = {completions} responses "
                        f"per step do not split over {world_size} processes; make it a multiple of {world_size}.")
    per_process = completions // world_size
    accumulation = next(g for g in range(1, per_process + 1)
                        if per_process % g == 0 and per_process // g <= MAX_MICRO_BATCH)
    steps = math.ceil(epochs * num_prompts / batch_size)
    if max_steps:
        steps = min(steps, max_steps)
    return {"per_device_train_batch_size": per_process // accumulation, "gradient_accumulation_steps": accumulation,
            "completions_per_step": completions, "steps": steps}


# ---------------------------------------------------------------- TRL-facing pieces
def _trl(algorithm: str):
    if algorithm == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        return RLOOConfig, RLOOTrainer
    from trl import GRPOConfig as TRLGRPOConfig, GRPOTrainer

    return TRLGRPOConfig, GRPOTrainer


def _lab_trainer(base: type) -> type:
    """TRL's trainer class with the lab's prompt tokens and its KL coefficient saved in every checkpoint."""

    class LabTrainer(base):
        def _tokenize_prompts(self, prompts: list):
            # The prompts arrive formatted (format_prompt); their tokens are PPO's queries exactly. TRL's own call
            # would add the tokenizer's special tokens, a second BOS for tokenizers that add one.
            ids = [self.processing_class(p, add_special_tokens=False)["input_ids"] for p in prompts]
            return ids, None, {}

        def _save_checkpoint(self, model, trial):
            if self.args.should_save:  # before TRL writes trainer_state.json, which marks the checkpoint complete
                folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / KL_STATE_FILE, {"kl_coef": self.beta})
            super()._save_checkpoint(model, trial)

    LabTrainer.__name__ = f"Lab{base.__name__}"
    return LabTrainer


class RewardModelScore:
    """The frozen reward model as TRL's reward function, scoring exactly as the evaluation and the app do.

    TRL hands over each completion decoded without special tokens, so a finished response has lost its EOS and a
    response cut at --max-response-length never had one; score_responses appends EOS to both (chat models), i.e.
    every response is scored as a closed turn, the way PPO's close_unfinished closes a cut rollout before scoring.
    Records each rollout's score and prompt key (rlhflab.ppo.prompt_key, the same key PPO logs) for the log.
    """

    __name__ = "reward_model"  # TRL names the reward's log keys after it

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.scores: list[float] = []
        self.prompt_keys: list[int] = []

    def __call__(self, prompts, completions, query, prompt_key, **kwargs) -> list[float]:
        scores = score_responses(self.model, self.tokenizer, list(query), list(completions), self.batch_size)
        self.scores.extend(scores)
        self.prompt_keys.extend(int(k) for k in prompt_key)
        return scores

    def pop_rollouts(self) -> tuple[list[float], list[int]]:
        """This process's rollout scores and prompt keys since the last call."""
        scores, keys = self.scores, self.prompt_keys
        self.scores, self.prompt_keys = [], []
        return [round(x, 4) for x in scores], keys


def _clear_autocast_cache_callback():
    """Autocast keeps its bf16 copies of trainable weights until the outermost context exits; one context spans the
    run, so without this every forward after the first optimizer step would still see the step-0 weights."""
    from transformers import TrainerCallback

    class ClearAutocastCache(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kw):
            torch.clear_autocast_cache()

    return ClearAutocastCache()


def _prepare_reference(trainer, reference):
    """Give the trainer a frozen copy of the start as its reference. TRL would reload `config._name_or_path`, which
    for a merged SFT adapter (--init-from) names the SFT's base, not the start: KL would not begin at 0."""
    from trl.models import prepare_deepspeed, prepare_fsdp

    reference.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed(reference, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        return prepare_fsdp(reference, trainer.accelerator)
    return trainer.accelerator.prepare_model(reference, evaluation_mode=True)


# ---------------------------------------------------------------- training
def train_grpo(cfg: GRPOConfig, on_step=None, trl_overrides: dict | None = None) -> Path:
    """Run GRPO (or RLOO) against the frozen reward model, full or LoRA; write the checkpoint; return its path."""
    import datasets

    method = cfg.algorithm
    timer = Timer()
    torch.manual_seed(cfg.seed)
    out = policy_output_dir(method, cfg.mode, cfg.output_dir)
    work = out.parent / f".{out.name}-work"  # Trainer checkpoints, for --resume
    log_path = work / METRICS_FILE

    # Data and models: every input error is raised here, before any folder is written.
    prompts = load_prompts(cfg.dataset, cfg.lang)
    reward_model, reward_tok = load_reward_model(cfg.reward_model)
    policy, tokenizer, start = load_start_policy(cfg.base_model, cfg.init_from)
    if reward_tok.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"reward model {cfg.reward_model} uses a different tokenizer from {start}; train the reward "
                        f"model on the same base (--base-model).")
    train_prompts, heldout, queries = prepare_prompts(cfg, tokenizer, prompts)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    plan = grpo_batch_plan(cfg.batch_size, cfg.num_generations, len(train_prompts), cfg.epochs, world_size,
                           cfg.max_steps)

    resume_from = prepare_resume(work, log_path, cfg.resume)
    kl_coef = cfg.kl_coef
    if resume_from is not None and (resume_from / KL_STATE_FILE).is_file():
        kl_coef = json.loads((resume_from / KL_STATE_FILE).read_text())["kl_coef"]
    reference = copy.deepcopy(policy) if cfg.mode == "full" else None  # LoRA: the base with adapters disabled

    TRLConfig, TRLTrainer = _trl(method)
    amp_dtype = autocast_dtype(cfg.bf16, best_device())
    save_every = max(1, plan["steps"] // 5)
    args = dict(
        output_dir=str(work), learning_rate=learning_rate(cfg), max_steps=plan["steps"],
        per_device_train_batch_size=plan["per_device_train_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        num_generations=cfg.num_generations, max_completion_length=cfg.max_response_length,
        temperature=cfg.temperature, num_iterations=1,
        beta=0.0,  # set on the trainer below, with our reference: a non-zero beta here makes TRL load its own
        seed=cfg.seed, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, save_strategy="steps", save_steps=save_every, save_total_limit=1,
        report_to=cfg.report_to, disable_tqdm=False, log_completions=False,
    )
    if method == "grpo":
        args["scale_rewards"] = "none"  # the spec's advantage: reward minus the group's mean (no division by its std)
    args = TRLConfig(**args)
    for key, value in (trl_overrides or {}).items():  # benchmarks compare against TRL's own settings
        setattr(args, key, value)

    train_dataset = datasets.Dataset.from_dict({
        "prompt": [format_prompt(tokenizer, p) for p in train_prompts],
        "query": train_prompts,  # the reward model formats the raw prompt itself (score_responses)
        "prompt_key": [prompt_key(q) for q in queries],
    })
    reward = RewardModelScore(reward_model, tokenizer)
    peft_config = lora_config(cfg, policy) if cfg.mode == "lora" else None
    trainer = _lab_trainer(TRLTrainer)(model=policy, reward_funcs=[reward], args=args, train_dataset=train_dataset,
                                       processing_class=tokenizer, peft_config=peft_config)
    reward_model.to(trainer.accelerator.device)
    if reference is not None:
        trainer.ref_model = _prepare_reference(trainer, reference)
    trainer.beta = trainer.args.beta = kl_coef
    policy_model = trainer.model
    if cfg.mode == "lora" and amp_dtype is not None:
        _frozen_block_linears_to(policy_model, amp_dtype)
    trainable, total = count_parameters(policy_model)

    controller = None if cfg.fixed_kl else AdaptiveKLController(kl_coef, cfg.kl_target, cfg.kl_horizon)
    steps_per_pass = len(train_prompts) // cfg.batch_size
    estimator = KL_ESTIMATORS[method]

    def to_record(logs: dict, state) -> dict:
        kl = float(logs.get("kl", float("nan")))
        length = float(logs.get("completions/mean_length", float("nan")))
        rollout_scores, rollout_prompts = reward.pop_rollouts()
        record = {
            "pass": (state.global_step - 1) // steps_per_pass + 1,  # pass over the prompts
            "episode": state.global_step * plan["completions_per_step"],
            "kl_per_token": kl, "kl_estimator": estimator, "kl_per_sequence": kl * length,
            "kl_coef": float(trainer.beta),
            "score": float(logs["reward"]), "score_std": float(logs.get("reward_std", float("nan"))),
            "entropy_per_token": float(logs.get("entropy", float("nan"))), "response_tokens_mean": length,
            "clipped_ratio": float(logs.get("completions/clipped_ratio", float("nan"))),  # responses cut at the limit
            "clipfrac": float(logs.get("clip_ratio/region_mean", float("nan"))),  # ratios clipped in the loss
            "loss": float(logs.get("loss", float("nan"))),
            # this process's rollouts (all of them in a single-process run): score and prompt key each
            "rollout_scores": rollout_scores, "rollout_prompts": rollout_prompts,
        }
        if controller is not None and math.isfinite(kl):  # every process moves beta the same way (kl is global)
            trainer.beta = trainer.args.beta = controller.update(kl, plan["completions_per_step"])
        record["kl_coef_next"] = float(trainer.beta)
        return record

    def after_step(record: dict):
        print(f"step {record['step']}/{plan['steps']}: KL {record['kl_per_token']:.4f} nats/token ({estimator}; "
              f"{record['kl_per_sequence']:.3f} nats/seq), score {record['score']:.3f}, beta {record['kl_coef']:.4f}, "
              f"{record['seconds_per_step']:.1f} s", flush=True)
        if on_step is not None:
            on_step(record)

    trainer.add_callback(trainer_metrics_callback(log_path, to_record, after_step))
    if amp_dtype is not None:
        trainer.add_callback(_clear_autocast_cache_callback())
    # Autocast (not TRL's bf16 flag) covers generation, the reference, scoring and the updates alike, as in PPO.
    with autocast(cfg.bf16) if amp_dtype is not None else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return out

    metrics = read_jsonl(log_path)
    info = {
        "algorithm": method, "reward_model": cfg.reward_model, "steps": plan["steps"],
        "prompts_per_step": cfg.batch_size, "num_generations": cfg.num_generations,
        "responses_per_step": plan["completions_per_step"],
        "trl_args": {k: plan[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps")},
        "policy_trainable_params": trainable, "policy_total_params": total,
        "lora_target_modules": sorted(peft_config.target_modules) if peft_config else None,
        "train_prompts": len(train_prompts), "heldout_prompts": len(heldout), "bf16": amp_dtype is not None,
        "kl_estimator": estimator, "loss_type": getattr(trainer.args, "loss_type", None),
        "seconds": timer.elapsed_s, "summary": summarize_metrics(metrics),
    }

    def extra(folder: Path):
        save_prompts(folder / HELDOUT_FILE, heldout)
        save_prompts(folder / TRAIN_PROMPTS_FILE, train_prompts)

    model = trainer.accelerator.unwrap_model(trainer.model)
    save_policy_checkpoint(out, model, tokenizer, cfg, method=method, start=start, info=info,
                           title=f"{POLICY_METHODS[method][0]} policy ({cfg.mode})",
                           sections=_card_sections(cfg, method, start, info), metrics_path=log_path, extra=extra,
                           datasets=[cfg.dataset])
    # The Trainer checkpoints hold optimizer state (twice the model, for AdamW): once the policy is saved they are
    # only disk used, and a finished run has nothing to resume.
    shutil.rmtree(work, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return out


# ---------------------------------------------------------------- the card
def _card_sections(cfg: GRPOConfig, method: str, start: str, info: dict) -> dict[str, str]:
    s = info["summary"]
    name = POLICY_METHODS[method][0]
    nan = float("nan")
    data_line = (f"`{cfg.dataset}` — **embedded stand-in prompts written for this project in oasst1 format, not "
                 f"OpenAssistant/oasst1**" if is_stand_in(cfg) else f"`{cfg.dataset}` (prompter messages only)")
    lo, hi = KL_BAND
    kl_last = s.get("kl_per_token_last", nan)
    run = policy_output_dir(method, cfg.mode).name
    results = run_summary_table({run: s}) if s else "no steps logged"  # as in report.md and the app
    how = (f"TRL 1.12's {'GRPOTrainer' if method == 'grpo' else 'RLOOTrainer'}: {cfg.num_generations} responses per "
           f"prompt, each response's advantage its reward minus "
           + ("the mean of its group" if method == "grpo" else "the mean of the other responses to its prompt")
           + ", KL to the reference "
           + ("in the loss (k3 per token)" if method == "grpo" else "subtracted from the reward (k1 per sequence)"))
    lora = (f"LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout} on "
            f"{info['lora_target_modules']}; this folder holds only the adapter — load it onto `{start}`."
            if cfg.mode == "lora" else "All policy parameters trained.")
    return {
        "What this is": (f"A {name} policy ({cfg.mode}) fine-tuned from `{start}` against the frozen reward model "
                         f"`{cfg.reward_model}` with {how}. {lora}\n\nPrompts: {data_line}; {info['train_prompts']} "
                         f"training prompts, {info['heldout_prompts']} held out (`{HELDOUT_FILE}`, never trained on)."),
        "Parameters": markdown_table(["model", "trainable", "total"], [
            ["policy", f"{info['policy_trainable_params']:,}", f"{info['policy_total_params']:,}"]]),
        "Training result": (f"{info['steps']} steps of {cfg.batch_size} prompts x {cfg.num_generations} responses "
                            f"(means over {s.get('window_label', 'no steps')}):\n\n{results}\n\nReward-model score "
                            f"gain, paired by prompt (last pass minus first pass, 95 % bootstrap interval): "
                            f"**{format_gain(s.get('paired_score_gain'))}**.\n\nMean per-token KL over the last steps "
                            f"{kl_last:.4f} nats/token — {'inside' if s and lo <= kl_last <= hi else 'outside'} the "
                            f"target band {lo}–{hi}; KL coefficient {'fixed' if cfg.fixed_kl else 'adaptive'}, final "
                            f"{s.get('kl_coef_final', nan):.4f}.\n\nPer-step metrics: `{METRICS_FILE}` (KL per token "
                            f"and per sequence in nats, estimator in `kl_estimator`)."),
        "Hyperparameters": markdown_table(["hyperparameter", "value"],
                                          [[k, v] for k, v in vars(cfg).items() if k != "push_to_hub"]),
        "How it was made": f"`{command_line()}` in {info['seconds']:.0f} s; bf16 autocast: {info['bf16']}.",
    }
