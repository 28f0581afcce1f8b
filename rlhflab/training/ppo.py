"""PPO training with TRL 1.12's PPOTrainer (`trl.experimental.ppo`, reached only through rlhflab.training.trl_ppo).

Around TRL it adds: the batch arithmetic of the spec, the adaptive KL controller, per-token KL and entropy (TRL logs
them summed per sequence), the exact per-token KL over the vocabulary from the logits TRL computes (the one the
controller follows by default), rollouts on the decode engine, the over-optimisation probe, a metrics log with
units, resumable work state, and the checkpoint folder with its card. The parts GRPO shares live in
rlhflab.training.online."""
from __future__ import annotations

import functools
import gc
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rlhflab.config import PPOConfig
from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings, stop_token_ids
from rlhflab.measure.overopt import OVEROPT_FILE, probe_card_sentence, read_overopt
from rlhflab.measure.ppo_metrics import KL_BAND, band_kl, format_gain, run_summary_table, summarize_metrics
from rlhflab.models.hardware import best_device, follow_thread_share
from rlhflab.models.loading import count_parameters, freeze_lower_layers, load_causal_lm, model_path
from rlhflab.models.precision import autocast, autocast_dtype, clear_autocast_cache_after_steps
from rlhflab.store.cards import Timer, how_it_was_made, markdown_table
from rlhflab.store.checkpoints import METRICS_FILE, recover_interrupted_save, save_atomically
from rlhflab.store.jsonio import append_jsonl, read_jsonl, write_json
from rlhflab.training.online import (
    ExactKLSums,
    KLCoefficient,
    OnlineStart,
    after_each_step,
    build_probe,
    copy_probes,
    frozen_block_linears_to,
    load_online_start,
    lora_sentence,
    main_rank,
    pass_of,
    prompt_key,
    prompts_sentence,
    rollout_generator,
    sample_rollouts,
    rollout_writer,
    trim_probes,
    world_size,
)
from rlhflab.training.policy import learning_rate, lora_config, policy_output_dir, save_policy_checkpoint
from rlhflab.training.trl_ppo import hookable_ppo_trainer, trl_ppo_module

PPO_INFO_FILE = "ppo_info.json"


# ---------------------------------------------------------------- batch arithmetic
def ppo_batch_plan(batch_size: int, mini_batch_size: int, num_prompts: int, epochs: int, world_size: int = 1,
                   max_steps: int | None = None) -> dict:
    """TRL 1.12 arguments for a rollout batch of `batch_size` with backward passes of `mini_batch_size`.

    TRL: rollout batch = per_device x grad_accum x processes; each backward takes per_device
    sequences; steps = ceil(total_episodes / rollout batch).
    """
    if batch_size % (mini_batch_size * world_size):
        raise UserError(f"--batch-size {batch_size} must be a multiple of --mini-batch-size {mini_batch_size}"
                        f" x {world_size} processes.")
    accumulation = batch_size // (mini_batch_size * world_size)
    total_episodes = epochs * num_prompts
    steps = math.ceil(total_episodes / batch_size)
    if max_steps:
        steps = min(steps, max_steps)
        total_episodes = steps * batch_size
    return {"per_device_train_batch_size": mini_batch_size, "gradient_accumulation_steps": accumulation,
            "local_rollout_forward_batch_size": mini_batch_size, "num_mini_batches": 1,
            "total_episodes": total_episodes, "steps": steps}


def trl_ppo_args(cfg: PPOConfig, plan: dict, work: "PPOWork", kl_coef: float, bf16: bool):
    """TRL's PPOConfig for the steps this run has left."""
    remaining = max(plan["steps"] - work.done_steps, 0)
    return trl_ppo_module().PPOConfig(
        output_dir=str(work.folder / "trl"), learning_rate=learning_rate(cfg), num_ppo_epochs=cfg.ppo_epochs,
        per_device_train_batch_size=plan["per_device_train_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        local_rollout_forward_batch_size=plan["local_rollout_forward_batch_size"],
        num_mini_batches=plan["num_mini_batches"], total_episodes=remaining * cfg.batch_size,
        response_length=cfg.max_response_length, temperature=cfg.temperature, stop_token="eos",
        kl_coef=kl_coef, lam=cfg.gae_lambda, missing_eos_penalty=cfg.missing_eos_penalty,
        seed=cfg.seed + work.done_steps,
        bf16=bf16, fp16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        num_sample_generations=0, save_strategy="no", report_to=cfg.report_to, logging_steps=1,
        dataset_num_proc=None, disable_tqdm=False,
        optim=cfg.lora_optim if cfg.mode == "lora" and cfg.lora_optim else cfg.optim,
    )


# ---------------------------------------------------------------- models
def build_value_model(source: Path, freeze_layers: int, pad_token_id: int, zero_head: bool = False):
    """The PPO value model from `source` (the reward model at the start, TRL's convention; the saved value model
    on --resume), its lowest `freeze_layers` blocks frozen.

    zero_head zeroes the scalar head, so every position's value starts at 0 and is learned from the
    returns. The reward model's own head, read in the middle of a response (it was trained on finished
    ones), swings from token to token by about as much as rewards differ between responses; with it,
    that swing, not the reward, decides most tokens' advantages (BENCHMARKS.md, "Demo PPO").
    """
    from transformers import AutoModelForSequenceClassification

    value_model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, use_safetensors=True)
    value_model.config.pad_token_id = pad_token_id
    if freeze_layers:
        freeze_lower_layers(value_model, freeze_layers)
    if zero_head:
        with torch.no_grad():  # TRL reads every value model's output through `.score`
            for param in value_model.score.parameters():
                param.zero_()
    return value_model


def close_unfinished(query_responses: torch.Tensor, context_length: int, pad_id: int, close_id: int) -> torch.Tensor:
    """End every response that has no `close_id` (EOS) with one, in the first pad slot after it.

    The reward model learned to score finished turns at their end token (rlhflab.measure.scoring.response_suffix);
    a rollout cut off at the length limit is scored the same way, as the evaluation and the app do.
    """
    responses = query_responses[:, context_length:]
    unfinished = ~(responses == close_id).any(1)
    if not unfinished.any():
        return query_responses
    pad_col = torch.full_like(query_responses[:, :1], pad_id)
    closed = torch.cat([query_responses, pad_col], 1)
    is_pad = torch.cat([responses == pad_id, torch.ones_like(pad_col, dtype=torch.bool)], 1)
    first_pad = is_pad.int().argmax(1)  # first pad slot of each response (the added column if none)
    rows = unfinished.nonzero().squeeze(1)
    closed[rows, context_length + first_pad[rows]] = close_id
    return closed


# ---------------------------------------------------------------- the trainer
@functools.cache
def lab_ppo_trainer() -> type:
    """TRL's PPOTrainer with the lab's rollouts, exact KL and rollout records (a subclass may override more)."""
    module = trl_ppo_module()

    class LabPPOTrainer(hookable_ppo_trainer()):
        """1. Rollouts: the whole rollout batch sampled in one call on the decode engine (online.sample_rollouts)
        with TRL's settings (temperature, no top-k or top-p, stopping where generate() would stop), and their
        log-probs from a full forward pass per chunk, like the reference and training passes: the sampler's
        incremental logits differ from the forward pass by rounding under bf16, which would show as a spurious KL
        at step 0 and PPO ratios != 1 before any update (BENCHMARKS.md). Logits are upcast to fp32 before TRL
        divides them by the temperature (under autocast the LM head returns bf16).
        2. Exact KL: the rollout logits are kept until each chunk's reference forward, where the exact KL, k1 and
        k3 sums over the response positions TRL's KL penalty covers are taken; no forward pass is added.
        3. Reward: each rollout's length, score and prompt key are recorded, and an unfinished response is
        closed with EOS (`close_id`) before the reward model scores it."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.generator: torch.Generator | None = None  # the rollouts' stream: set before train()
            self.stop_ids: list[int] = []
            self.close_id: int | None = None
            self.exact_kl = ExactKLSums()
            self._pending = None  # (query_responses, rollout logits, context length) of the batch in progress
            self._offset = 0
            self._lengths: list[torch.Tensor] = []
            self._scores: list[float] = []
            self._prompt_keys: list[int] = []

        def set_rollouts(self, tokenizer, seed: int, done_steps: int) -> None:
            # Where generate() would stop (the model's generation config) and TRL's stop token (the tokenizer's
            # EOS): stopping at either leaves TRL's post-processed responses unchanged.
            self.stop_ids = stop_token_ids(tokenizer, self.policy_model, chat_end=False)
            self.generator = rollout_generator(seed, done_steps, self.accelerator.process_index)
            # Close unfinished rollouts with EOS exactly when the reward model's inputs end with it (chat models).
            self.close_id = tokenizer.eos_token_id if getattr(tokenizer, "chat_template", None) else None

        def train(self):
            # TRL's loop calls gc.collect() twice a step; objects alive before training are moved to the permanent
            # generation, so each collection walks only what the step created.
            gc.collect()
            gc.freeze()
            try:
                return super().train()
            finally:
                gc.unfreeze()

        def upcast_forward(self, model, query_responses, pad_token_id):
            out = module.forward(model, query_responses, pad_token_id)
            policy_out = out[0] if isinstance(out, tuple) else out  # the policy+value wrapper returns a pair
            policy_out.logits = policy_out.logits.float()
            return out

        @torch.no_grad()
        def batch_generation(self, model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
            settings = GenerationSettings(temperature=generation_config.temperature, top_k=0, top_p=1.0,
                                          repetition_penalty=1.0, max_new_tokens=generation_config.max_new_tokens)
            attention_mask = queries != pad_token_id
            input_ids = torch.masked_fill(queries, ~attention_mask, 0)  # as TRL's generate(): pads never embedded
            responses = sample_rollouts(model, input_ids, attention_mask.long(), settings, self.stop_ids,
                                        pad_token_id, self.generator)
            query_responses = torch.cat([queries, responses.to(queries.device)], 1)
            context = queries.shape[1]
            chunks = []
            for i in range(0, query_responses.shape[0], local_rollout_forward_batch_size):
                chunk = query_responses[i:i + local_rollout_forward_batch_size]
                logits = self.upcast_forward(model, chunk, pad_token_id).logits[:, context - 1:-1]
                logits /= self.args.temperature + 1e-7  # exactly TRL's arithmetic for the other logits
                chunks.append(logits)
            logits = torch.cat(chunks, 0)
            self._pending, self._offset = (query_responses, logits, context), 0
            return query_responses, logits

        def forward(self, model, query_responses, pad_token_id):
            out = self.upcast_forward(model, query_responses, pad_token_id)
            if not isinstance(out, tuple) and self._pending is not None:  # the reference pass of a rollout chunk
                self._add_exact_kl(out.logits, query_responses, pad_token_id)
            return out

        def _add_exact_kl(self, reference_logits, query_responses, pad_token_id):
            batch, rollout_logits, context = self._pending
            n, at = query_responses.shape[0], self._offset
            if at + n > batch.shape[0] or not torch.equal(query_responses, batch[at:at + n]):
                self._pending = None  # not the chunk we hold: measure nothing rather than pair the wrong logits
                return
            with torch.no_grad():
                ref = reference_logits[:, context - 1:-1].float() / (self.args.temperature + 1e-7)
                responses = query_responses[:, context:]
                self.exact_kl.add_logits(rollout_logits[at:at + n].float(), ref, responses,
                                         self.response_mask(responses, pad_token_id))
            self._offset += n
            if self._offset >= batch.shape[0]:
                self._pending = None

        def response_mask(self, responses: torch.Tensor, pad_token_id: int) -> torch.Tensor:
            """TRL's: the response truncated after the stop token, kept up to (excluding) its first pad."""
            processed = responses
            if self.stop_token_id is not None:
                processed = module.truncate_response(self.stop_token_id, pad_token_id, responses)
            lengths = module.first_true_indices(processed == pad_token_id) - 1
            idx = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)
            return idx <= lengths.unsqueeze(1)

        def get_reward(self, model, query_responses, pad_token_id, context_length):
            if model is not self.reward_model:  # the value model
                return super().get_reward(model, query_responses, pad_token_id, context_length)
            self._lengths.append((query_responses[:, context_length:] != pad_token_id).sum(1).cpu())
            self._prompt_keys.extend(prompt_key(q[q != pad_token_id].tolist())
                                     for q in query_responses[:, :context_length])
            if self.close_id is not None:
                query_responses = close_unfinished(query_responses, context_length, pad_token_id, self.close_id)
            out = super().get_reward(model, query_responses, pad_token_id, context_length)
            self._scores.extend(out[1].float().cpu().tolist())
            return out

        def pop_step(self) -> dict:
            """The step's rollouts since the last call: mean response length (over all processes), this process's
            scores and prompt keys, and the exact-KL sums reduced over processes (None if nothing was captured)."""
            mean = torch.cat(self._lengths).float().mean() if self._lengths else torch.tensor(float("nan"))
            if self.accelerator.num_processes > 1:
                mean = self.accelerator.reduce(mean.to(self.accelerator.device), reduction="mean").cpu()
            step = {"length": float(mean), "scores": [round(x, 4) for x in self._scores],
                    "prompt_keys": self._prompt_keys, "kls": self.exact_kl.pop(self.accelerator)}
            self._lengths, self._scores, self._prompt_keys = [], [], []
            return step

    return LabPPOTrainer


def ppo_step_log(trainer, log_path: Path, kl: KLCoefficient, done_steps: int, done_episodes: int,
                 steps_per_pass: int, after_step=None):
    """A TrainerCallback writing one metrics.jsonl record per PPO step (units in the names) and moving the KL
    coefficient after it."""
    from transformers import TrainerCallback

    class PPOStepLog(TrainerCallback):
        last_time = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "objective/kl" not in logs:
                return
            follow_thread_share()  # once per PPO step: a core freed beside this run is taken at the next step
            now = time.perf_counter()
            seconds, self.last_time = now - self.last_time, now
            rollouts = trainer.pop_step()
            length, kls = max(rollouts["length"], 1.0), rollouts["kls"]
            kl_seq = float(logs["objective/kl"])
            step = state.global_step + done_steps
            record = {
                "step": step, "pass": pass_of(step, steps_per_pass),
                "episode": int(logs.get("episode", state.episode)) + done_episodes,
                "kl_per_token": kl_seq / length,
                "kl_estimator": "k1",  # TRL's: log pi - log pi_ref of the sampled tokens, summed per sequence
                "kl_per_sequence": kl_seq,
                # the exact KL over the vocabulary and k3, per token over the same response positions (null if the
                # rollout logits could not be captured)
                "kl_exact_per_token": kls["exact"] if kls else None,
                "kl_k3_per_token": kls["k3"] if kls else None,
                "kl_coef": float(args.kl_coef),
                "score": float(logs["objective/scores"]),
                "rlhf_reward": float(logs["objective/rlhf_reward"]),
                "non_score_reward": float(logs["objective/non_score_reward"]),
                "entropy_per_token": float(logs["objective/entropy"]) / length,
                "response_tokens_mean": length,
                "policy_loss": float(logs.get("loss/policy_avg", float("nan"))),
                "value_loss": float(logs.get("loss/value_avg", float("nan"))),
                "clipfrac": float(logs.get("policy/clipfrac_avg", float("nan"))),
                "lr": float(logs.get("lr", float("nan"))),
                "seconds_per_step": seconds,
                # this process's rollouts (all of them in a single-process run): score and prompt key each
                "rollout_scores": rollouts["scores"], "rollout_prompts": rollouts["prompt_keys"],
            }
            measured = {"exact": kls["exact"], "k3": kls["k3"]} if kls else None  # k1: TRL's own
            follows = kl.after_step(measured, "k1", record["kl_per_token"], args.batch_size)
            if kl.controller is not None:
                args.kl_coef = record["kl_coef_next"] = kl.value
            record["kl_controller_estimator"] = follows  # None: beta fixed
            if not state.is_world_process_zero:  # every process moves beta; one writes
                return
            append_jsonl(log_path, record)
            if after_step is not None:
                after_step(record)

    return PPOStepLog()


# ---------------------------------------------------------------- resumable work state
class PPOWork:
    """PPO's work folder, `.<checkpoint>-work` beside the checkpoint: `saved/` (policy/, value/, state.json of the
    last saved step, replaced atomically as one folder), the metrics log and the probe log; --resume continues
    from `saved/`: its weights, the metrics up to it and its KL coefficient."""

    def __init__(self, out: Path, resume: bool, steps: int):
        self.folder = out.parent / f".{out.name}-work"
        self.saved = self.folder / "saved"
        self.log_path = self.folder / METRICS_FILE
        if resume and (note := recover_interrupted_save(self.saved)):
            print(f"--resume: {note}.", flush=True)
        state_file = self.saved / "state.json"
        self.state = json.loads(state_file.read_text()) if resume and state_file.is_file() else None
        if resume and self.state is None:
            print(f"--resume: no saved PPO state in {self.folder}; starting from scratch.", flush=True)
        if self.state is None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.done_steps = self.state["step"] if self.state else 0
        self.done_episodes = self.state["episode"] if self.state else 0
        if self.done_steps >= steps:
            print(f"--resume: all {steps} steps already done; writing the checkpoint.", flush=True)
        if self.state and main_rank():  # steps logged after the last save run again: log each once
            kept = [r for r in read_jsonl(self.log_path) if r["step"] <= self.done_steps]
            self.log_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            trim_probes(self.folder, self.done_steps)

    def start_models(self, cfg: PPOConfig, run: OnlineStart):
        """(policy, reference or None, value model): a resumed full run trains the saved policy against the start
        (a copy of the resumed policy would measure KL from the resume point); TRL copies the policy it is given
        (full) or disables the adapters (LoRA) when the reference is None."""
        policy, reference = run.policy, None
        if self.state and cfg.mode == "full":
            reference, (policy, _) = policy, load_causal_lm(str(self.saved / "policy"))
        value = build_value_model(self.saved / "value" if self.state else model_path(cfg.reward_model),
                                  cfg.value_freeze_layers, run.tokenizer.pad_token_id,
                                  zero_head=cfg.value_head == "zero" and self.state is None)
        return policy, reference, value

    def restore_adapter(self, cfg: PPOConfig, policy_model) -> None:
        if self.state and cfg.mode == "lora":
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(policy_model, load_file(self.saved / "policy" / "adapter_model.safetensors"))

    def saver(self, trainer, tokenizer, steps: int):
        """Saves the work state every fifth of the run and at its end."""
        every = max(1, steps // 5)

        def save(record: dict) -> None:
            if record["step"] % every and record["step"] != steps:
                return

            def write(folder: Path):  # atomic: a kill mid-save leaves the previous step's state whole
                (folder / "policy").mkdir(parents=True, exist_ok=True)
                trainer.policy_model.save_pretrained(folder / "policy")
                tokenizer.save_pretrained(folder / "policy")
                trainer.accelerator.unwrap_model(trainer.model).value_model.save_pretrained(folder / "value")
                write_json(folder / "state.json", {"step": record["step"], "episode": record["episode"],
                                                   "kl_coef": record.get("kl_coef_next", record["kl_coef"])})

            save_atomically(self.saved, write)

        return save


# ---------------------------------------------------------------- training
def train_ppo(cfg: PPOConfig, on_step=None, trainer_class: type | None = None) -> Path:
    """Run PPO (full or LoRA) against the frozen reward model; write the checkpoint; return its path.

    `on_step(record)` runs after each step's record is written; `trainer_class` replaces lab_ppo_trainer() (a
    subclass of it, e.g. a benchmark's, may change TRL's arguments or time the hooks)."""
    import datasets

    timer = Timer()
    torch.manual_seed(cfg.seed)
    out = policy_output_dir("ppo", cfg.mode, cfg.output_dir)
    run = load_online_start(cfg)  # every input error stops here, before anything is written
    plan = ppo_batch_plan(cfg.batch_size, cfg.mini_batch_size, len(run.train_prompts), cfg.epochs, world_size(),
                          cfg.max_steps)
    work = PPOWork(out, cfg.resume, plan["steps"])
    policy, reference, value_model = work.start_models(cfg, run)

    amp_dtype = autocast_dtype(cfg.bf16, best_device())
    kl = KLCoefficient(cfg, work.state["kl_coef"] if work.state else cfg.kl_coef)
    trainer = (trainer_class or lab_ppo_trainer())(
        args=trl_ppo_args(cfg, plan, work, kl.value, amp_dtype is not None), processing_class=run.tokenizer,
        model=policy, ref_model=reference, reward_model=run.reward_model, value_model=value_model,
        train_dataset=datasets.Dataset.from_dict({"input_ids": run.queries}),
        peft_config=lora_config(cfg, policy) if cfg.mode == "lora" else None)
    if cfg.mode == "lora" and amp_dtype is not None:
        frozen_block_linears_to(trainer.policy_model, amp_dtype)
    work.restore_adapter(cfg, trainer.policy_model)
    base_weights = lora_base_weights(trainer.policy_model) if cfg.mode == "lora" else None
    trainer.set_rollouts(run.tokenizer, seed=cfg.seed, done_steps=work.done_steps)
    probe = build_probe(cfg, trainer.accelerator, trainer.policy_model, trainer.ref_model, run,
                        work.folder / OVEROPT_FILE)
    after_step = after_each_step(cfg, plan["steps"], "k1", probe, work.saver(trainer, run.tokenizer, plan["steps"]),
                                 on_step, rollouts=rollout_writer(cfg, run, work.folder, lambda: trainer.exact_kl))
    trainer.add_callback(ppo_step_log(trainer, work.log_path, kl, work.done_steps, work.done_episodes,
                                      len(run.train_prompts) // cfg.batch_size, after_step))
    if amp_dtype is not None:
        clear_autocast_cache_after_steps(trainer.optimizer)
    if work.done_steps < plan["steps"]:
        # TRL 1.12's PPOTrainer builds its Accelerator without a mixed-precision setting, so its `bf16=True` changes
        # nothing; autocast here covers rollouts, scoring and the PPO updates.
        with autocast(cfg.bf16):
            if probe is not None and work.done_steps == 0:  # the start, before any update
                probe.run(0, 0)
            trainer.train()
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return out

    check_base_unchanged(trainer.policy_model, base_weights)
    info = run_info(cfg, plan, trainer, run, work, timer, amp_dtype is not None)

    def extra(folder: Path):
        copy_probes(work.folder, folder)
        run.save_prompts(folder)
        write_json(folder / PPO_INFO_FILE, info)

    save_policy_checkpoint(out, trainer.policy_model, run.tokenizer, cfg, method="ppo", start=run.start, info={},
                           title=f"PPO policy ({cfg.mode})", sections=card_sections(cfg, info),
                           metrics_path=work.log_path, extra=extra, datasets=[cfg.dataset])
    trainer.accelerator.wait_for_everyone()
    return out


def lora_base_weights(policy_model) -> dict:
    """A copy of a LoRA policy's base weights, to prove after training that they stayed bit-identical."""
    return {n: p.detach().clone() for n, p in policy_model.named_parameters() if "lora_" not in n}


def check_base_unchanged(policy_model, base_weights: dict | None) -> None:
    if base_weights is None:
        return
    changed = [n for n, p in policy_model.named_parameters()
               if n in base_weights and not torch.equal(p.detach(), base_weights[n])]
    if changed:
        raise RuntimeError(f"LoRA training changed base weights: {changed[:3]}")


def run_info(cfg: PPOConfig, plan: dict, trainer, run: OnlineStart, work: PPOWork, timer: Timer, bf16: bool) -> dict:
    """ppo_info.json: what the run was and what it measured."""
    trainable, total = count_parameters(trainer.policy_model)
    v_trainable, v_total = count_parameters(trainer.accelerator.unwrap_model(trainer.model).value_model)
    peft_config = getattr(trainer.policy_model, "peft_config", {}).get("default") if cfg.mode == "lora" else None
    return {
        "mode": cfg.mode, "base_model": cfg.base_model, "init_from": run.start, "reward_model": cfg.reward_model,
        "steps": plan["steps"], "rollout_batch": cfg.batch_size, "trl_args": dict(plan),
        "policy_trainable_params": trainable, "policy_total_params": total,
        "value_trainable_params": v_trainable, "value_total_params": v_total,
        "lora_target_modules": sorted(peft_config.target_modules) if peft_config else None,
        "train_prompts": len(run.train_prompts), "heldout_prompts": len(run.heldout), "bf16": bf16,
        "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
        "value_head": cfg.value_head, "gae_lambda": trainer.args.lam,
        "kl_controller_estimator": None if cfg.fixed_kl else cfg.kl_estimator,
        "overopt_probes": len(read_overopt(work.folder)),
        "seconds": timer.elapsed_s, "summary": summarize_metrics(read_jsonl(work.log_path)),
    }


# ---------------------------------------------------------------- the card
def card_sections(cfg: PPOConfig, info: dict) -> dict[str, str]:
    s = info["summary"]
    start = info["init_from"]
    lo, hi = KL_BAND
    kl_last, kl_name = band_kl(s) if s else (float("nan"), "k1")
    in_band = s and lo <= kl_last <= hi
    results = run_summary_table({f"ppo-{cfg.mode}": s}) if s else "no steps logged"  # as in report.md and the app
    return {
        "What this is": (f"A PPO policy ({cfg.mode}) fine-tuned from `{start}` against the frozen reward "
                         f"model `{cfg.reward_model}` with TRL 1.12's PPOTrainer. {lora_sentence(cfg, info, start)}"
                         f"\n\n{prompts_sentence(cfg, info)}"),
        "Parameters": markdown_table(["model", "trainable", "total"], [
            ["policy", f"{info['policy_trainable_params']:,}", f"{info['policy_total_params']:,}"],
            ["value model", f"{info['value_trainable_params']:,}", f"{info['value_total_params']:,}"]]),
        "Training result": (f"{info['steps']} PPO steps of {cfg.batch_size} rollouts (means over "
                            f"{s.get('window_label', 'no steps')}):\n\n{results}\n\nReward-model score gain, paired by "
                            f"prompt (last pass minus first pass, 95 % bootstrap interval): "
                            f"**{format_gain(s.get('paired_score_gain'))}**.\n\nMean per-token KL over the last steps "
                            f"{kl_last:.4f} nats/token ({kl_name}{' over the vocabulary' if kl_name == 'exact' else ''}"
                            f"; TRL's k1 estimate {s.get('kl_per_token_last', float('nan')):.4f}) — "
                            f"{'inside' if in_band else 'outside'} the target band {lo}–{hi}; KL coefficient "
                            f"{'adaptive, following the ' + cfg.kl_estimator + ' KL' if not cfg.fixed_kl else 'fixed'}"
                            f", final {s.get('kl_coef_final', float('nan')):.4f}."
                            f"\n\nPer-step metrics: `{METRICS_FILE}` (KL per token: `kl_exact_per_token` exact, "
                            f"`kl_per_token` k1, `kl_k3_per_token` k3; per sequence, in nats)."
                            + probe_card_sentence(cfg, info["heldout_prompts"])),
        "Hyperparameters": markdown_table(["hyperparameter", "value"],
                                          [[k, v] for k, v in asdict(cfg).items() if k != "push_to_hub"]),
        "How it was made": how_it_was_made(info["seconds"], cfg.bf16),
    }
