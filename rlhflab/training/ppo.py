"""PPO training: the one module that touches TRL's PPOTrainer (trl==1.12.0, `trl.experimental.ppo`).

Around TRL it adds: the batch arithmetic of the spec, the adaptive KL controller (Ziegler et
al. 2019) as a callback, per-token KL and entropy (TRL logs them summed per sequence), the exact
per-token KL over the vocabulary from the logits TRL computes (the one the controller follows by
default), the over-optimisation probe (rlhflab.measure.overopt), a metrics log with units, resumable work
state, and the checkpoint folder with its card."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlhflab.config import CHECKPOINTS_DIR, PPOConfig
from rlhflab.data.oasst1 import load_prompts, save_prompts, split_prompts
from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings, sample_responses, stop_token_ids
from rlhflab.measure.overopt import (
    OVEROPT_FILE,
    OverOptProbe,
    adapters_disabled,
    holder,
    probe_card_sentence,
    read_overopt,
)
from rlhflab.measure.overopt import keep_up_to as keep_probes_up_to
from rlhflab.measure.ppo_metrics import KL_BAND, band_kl, format_gain, run_summary_table, summarize_metrics  # noqa: F401
from rlhflab.models.hardware import best_device, follow_thread_share
from rlhflab.models.loading import (
    count_parameters,
    freeze_lower_layers,
    load_causal_lm,
    load_reward_model,
    lora_target_modules,
    model_path,
)
from rlhflab.models.precision import autocast, autocast_dtype, clear_autocast_cache_after_steps
from rlhflab.models.prompts import format_prompt
from rlhflab.store.cards import Timer, command_line, markdown_table, write_model_card
from rlhflab.store.checkpoints import METRICS_FILE, recover_interrupted_save, save_atomically
from rlhflab.store.hub import report_push
from rlhflab.store.jsonio import append_jsonl, read_jsonl, write_json
from rlhflab.store.rollouts import copy_rollouts, record_step_rollouts
from rlhflab.training.policy import POLICY_INFO_FILE, load_start_policy, policy_metadata

HELDOUT_FILE = "heldout_prompts.jsonl"


TRAIN_PROMPTS_FILE = "train_prompts.jsonl"


PPO_INFO_FILE = "ppo_info.json"


# ---------------------------------------------------------------- KL controller
@dataclass
class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL/target - 1, -clip, clip) * n / horizon)   (Ziegler et al. 2019, eq. 2).

    KL and target are per token, in nats; n is the number of episodes in the step.
    """

    value: float
    target: float
    horizon: int
    clip: float = 0.2

    def update(self, kl_per_token: float, n_episodes: int) -> float:
        error = min(max(kl_per_token / self.target - 1.0, -self.clip), self.clip)
        self.value *= 1.0 + error * n_episodes / self.horizon
        return self.value


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


# ---------------------------------------------------------------- TRL-facing pieces
def _trl():
    from trl.experimental.ppo import PPOConfig as TRLPPOConfig
    from trl.experimental.ppo import PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trainer_module

    return TRLPPOConfig, PPOTrainer, trainer_module


def prompt_key(token_ids: list[int]) -> int:
    """A stable key for a prompt (its token ids), to pair a prompt's rollouts across passes."""
    return zlib.crc32(bytes(str(token_ids), "ascii"))


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


class _RewardProbe:
    """Sits in front of TRL's reward call: records each rollout's response length (TRL logs only
    summed KL) and closes unfinished responses with EOS before the reward model scores them."""

    def __init__(self, close_id: int | None = None):
        self.lengths: list[torch.Tensor] = []
        self.scores: list[float] = []
        self.prompt_keys: list[int] = []
        self.reward_model = None
        self.close_id = close_id

    @contextlib.contextmanager
    def installed(self, trainer_module, reward_model):
        original = trainer_module.get_reward
        self.reward_model = reward_model

        def get_reward(model, query_responses, pad_token_id, context_length):
            if model is not self.reward_model:
                return original(model, query_responses, pad_token_id, context_length)
            self.lengths.append((query_responses[:, context_length:] != pad_token_id).sum(1).cpu())
            self.prompt_keys.extend(prompt_key(q[q != pad_token_id].tolist()) for q in query_responses[:, :context_length])
            if self.close_id is not None:
                query_responses = close_unfinished(query_responses, context_length, pad_token_id, self.close_id)
            out = original(model, query_responses, pad_token_id, context_length)
            self.scores.extend(out[1].float().cpu().tolist())
            return out

        trainer_module.get_reward = get_reward
        try:
            yield self
        finally:
            trainer_module.get_reward = original

    def pop_rollouts(self) -> tuple[list[float], list[int]]:
        """This process's rollout scores and prompt keys since the last call (for the paired gain)."""
        scores, keys = self.scores, self.prompt_keys
        self.scores, self.prompt_keys = [], []
        return [round(x, 4) for x in scores], keys

    def pop_mean(self, accelerator=None) -> float:
        """Mean response length of the step, averaged over all processes (same value on each)."""
        mean = torch.cat(self.lengths).float().mean() if self.lengths else torch.tensor(float("nan"))
        self.lengths.clear()
        if accelerator is not None and accelerator.num_processes > 1:
            mean = accelerator.reduce(mean.to(accelerator.device), reduction="mean").cpu()
        return float(mean)


@contextlib.contextmanager
def _engine_rollouts(trainer_module, temperature: float, stop_ids: list[int], generator: torch.Generator):
    """Rollouts on the decode engine, and every log-prob TRL uses from the same computation.

    1. TRL's `batch_generation` calls generate() once per chunk of local_rollout_forward_batch_size; here the
       whole rollout batch is sampled in one call of rlhflab.generation.sampling.sample_responses (the app's and the
       evaluation's sampler; on a bf16 CPU its packed bf16 step) with TRL's settings: temperature, no top-k or
       top-p, stopping at the end-of-turn ids generate() would stop at, padding after.
    2. Rollout log-probs from a full forward pass per chunk, like the reference and training passes, instead of
       from the sampler's incremental logits: under bf16 those differ from the forward pass by rounding (mean
       |Δ log-prob| ~0.03 nats, exact KL ~1.5e-3 nats/token on the demo model: bench/bench_ppo.py's "rollouts" row),
       which would show as a spurious KL at step 0 and PPO ratios != 1 before any update. With this, KL at step 0
       is exactly 0 whenever policy and reference are the same weights.
    3. Logits upcast to fp32 before TRL divides them by the temperature and takes log-softmax (under autocast the
       LM head returns bf16, and TRL would do that arithmetic in bf16).
    """
    original_generation, original_forward = trainer_module.batch_generation, trainer_module.forward

    def forward(model, query_responses, pad_token_id):
        out = original_forward(model, query_responses, pad_token_id)
        policy_out = out[0] if isinstance(out, tuple) else out  # the policy+value wrapper returns a pair
        policy_out.logits = policy_out.logits.float()
        return out

    @torch.no_grad()
    def batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
        settings = GenerationSettings(temperature=generation_config.temperature, top_k=0, top_p=1.0,
                                      repetition_penalty=1.0, max_new_tokens=generation_config.max_new_tokens)
        attention_mask = queries != pad_token_id
        input_ids = torch.masked_fill(queries, ~attention_mask, 0)  # as TRL's generate(): pad ids never embedded
        was_training = model.training
        model.eval()
        try:
            responses = sample_responses(model, input_ids, attention_mask.long(), settings, stop_ids, pad_token_id,
                                         generator=generator)
        finally:
            model.train(was_training)
        query_responses = torch.cat([queries, responses.to(queries.device)], 1)
        context = queries.shape[1]
        chunks = []
        for i in range(0, query_responses.shape[0], local_rollout_forward_batch_size):
            logits = forward(model, query_responses[i:i + local_rollout_forward_batch_size], pad_token_id).logits
            logits = logits[:, context - 1:-1]
            logits /= temperature + 1e-7  # exactly TRL's arithmetic for the reference and training logits
            chunks.append(logits)
        return query_responses, torch.cat(chunks, 0)

    trainer_module.batch_generation, trainer_module.forward = batch_generation, forward
    try:
        yield
    finally:
        trainer_module.batch_generation, trainer_module.forward = original_generation, original_forward


class _ExactKLCapture:
    """Exact per-token KL(policy ‖ reference) of each rollout batch, from the logits TRL computes anyway.

    TRL's rollout log-probs come from the logits `batch_generation` returns (already divided by the temperature:
    the full forward pass of _engine_rollouts), its reference log-probs
    from the `forward` of the reference that follows, one chunk of rollouts at a time. Both module-level functions
    are wrapped: the rollout logits are kept until each chunk's reference forward, where the exact KL, k1 and k3
    sums over the chunk's response positions are taken (the positions TRL's KL penalty covers: up to and including
    the stop token, padding excluded) under softmax(logits / (temperature + 1e-7)), TRL's arithmetic. No forward
    pass is added. Each process sums its own rollouts; the step's record reduces them over processes.
    """

    def __init__(self, temperature: float, stop_token_id: int | None):
        from rlhflab.measure.kl import KLAccumulator

        self.temperature, self.stop_token_id = temperature, stop_token_id
        self.pending = None  # (query_responses, rollout logits, context length) of the batch being processed
        self.offset = 0
        self.sums = KLAccumulator()

    def response_mask(self, trainer_module, responses: torch.Tensor, pad_token_id: int) -> torch.Tensor:
        """TRL's: the response truncated after the stop token, kept up to (excluding) its first pad."""
        processed = responses
        if self.stop_token_id is not None:
            processed = trainer_module.truncate_response(self.stop_token_id, pad_token_id, responses)
        lengths = trainer_module.first_true_indices(processed == pad_token_id) - 1
        idx = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)
        return idx <= lengths.unsqueeze(1)

    @contextlib.contextmanager
    def installed(self, trainer_module):
        from rlhflab.measure.kl import kl_sums

        original_generation, original_forward = trainer_module.batch_generation, trainer_module.forward

        def batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
            query_responses, logits = original_generation(model, queries, local_rollout_forward_batch_size,
                                                          pad_token_id, generation_config)
            self.pending, self.offset = (query_responses, logits, queries.shape[1]), 0
            return query_responses, logits

        def forward(model, query_responses, pad_token_id):
            out = original_forward(model, query_responses, pad_token_id)
            if isinstance(out, tuple) or self.pending is None:  # a training pass (policy + value), not the reference
                return out
            batch, rollout_logits, context = self.pending
            n = query_responses.shape[0]
            if self.offset + n > batch.shape[0] or not torch.equal(query_responses,
                                                                   batch[self.offset:self.offset + n]):
                self.pending = None  # not the chunk we hold: measure nothing rather than pair the wrong logits
                return out
            with torch.no_grad():
                ref = out.logits[:, context - 1:-1].float() / (self.temperature + 1e-7)
                responses = query_responses[:, context:]
                mask = self.response_mask(trainer_module, responses, pad_token_id)
                self.sums.add(kl_sums(rollout_logits[self.offset:self.offset + n].float(), ref, responses, mask))
            self.offset += n
            if self.offset >= batch.shape[0]:
                self.pending = None
            return out

        trainer_module.batch_generation, trainer_module.forward = batch_generation, forward
        try:
            yield self
        finally:
            trainer_module.batch_generation, trainer_module.forward = original_generation, original_forward


def _metrics_callback(log_path: Path, probe: _RewardProbe, controller: AdaptiveKLController | None,
                      step_offset: int, episode_offset: int, on_step=None, accelerator=None,
                      steps_per_pass: int = 0, exact: _ExactKLCapture | None = None, kl_estimator: str = "k1"):
    from transformers import TrainerCallback

    class PPOMetricsLog(TrainerCallback):
        """One record per PPO step with units in the names; moves the KL coefficient when adaptive."""

        last_time = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "objective/kl" not in logs:
                return
            follow_thread_share()  # once per PPO step: a core freed beside this run is taken at the next step
            now = time.perf_counter()
            seconds, self.last_time = now - self.last_time, now
            length = max(probe.pop_mean(accelerator), 1.0)
            rollout_scores, rollout_prompts = probe.pop_rollouts()
            kl_seq = float(logs["objective/kl"])
            kls = exact.sums.pop(accelerator) if exact is not None else None
            step = state.global_step + step_offset
            record = {
                "step": step,
                "pass": (step - 1) // steps_per_pass + 1 if steps_per_pass else 1,  # pass over the prompts
                "episode": int(logs.get("episode", state.episode)) + episode_offset,
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
                "rollout_scores": rollout_scores, "rollout_prompts": rollout_prompts,
            }
            follows = kl_estimator if kls else "k1"  # TRL's k1 when nothing was captured
            if controller is not None:
                kl = {"exact": record["kl_exact_per_token"], "k3": record["kl_k3_per_token"]}.get(
                    follows, record["kl_per_token"])
                args.kl_coef = controller.update(kl, args.batch_size)
                record["kl_coef_next"] = args.kl_coef
            record["kl_controller_estimator"] = follows if controller is not None else None  # None: beta fixed
            if not state.is_world_process_zero:  # every process moves beta; one writes
                return
            append_jsonl(log_path, record)
            if on_step is not None:
                on_step(record)

    return PPOMetricsLog()


# ---------------------------------------------------------------- data
def prepare_prompts(cfg: PPOConfig, tokenizer, prompts: list[str] | None = None
                    ) -> tuple[list[str], list[str], list[list[int]]]:
    """(train prompts, held-out prompts, tokenized train queries); over-long prompts are dropped."""
    prompts = load_prompts(cfg.dataset, cfg.lang) if prompts is None else prompts
    train, heldout = split_prompts(prompts, cfg.num_prompts, cfg.num_heldout,
                                   cfg.seed if cfg.data_seed is None else cfg.data_seed)
    kept, queries = [], []
    for p in train:
        ids = tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
        if len(ids) <= cfg.max_prompt_length:
            kept.append(p)
            queries.append(ids)
    if not kept:
        raise UserError(f"all {len(train)} training prompts are longer than --max-prompt-length "
                        f"{cfg.max_prompt_length} tokens; raise the limit or use shorter prompts.")
    if len(kept) < cfg.batch_size:
        raise UserError(f"only {len(kept)} usable training prompts but --batch-size is {cfg.batch_size}; "
                        f"lower the batch size or add prompts.")
    # Whole batches only, so every pass over the prompts draws exactly the same prompts (TRL drops
    # the incomplete last batch, a different one each pass) and first-vs-last pass compares like for like.
    whole = len(kept) - len(kept) % cfg.batch_size
    kept, queries = kept[:whole], queries[:whole]
    return kept, heldout, queries


# ---------------------------------------------------------------- training
def output_dir_for(cfg: PPOConfig) -> Path:
    return Path(cfg.output_dir or CHECKPOINTS_DIR / f"ppo-{cfg.mode}")


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


def train_ppo(cfg: PPOConfig, on_step=None, trl_overrides: dict | None = None) -> Path:
    """Run PPO (full or LoRA) against the frozen reward model; write the checkpoint; return its path."""
    import datasets
    from peft import LoraConfig

    timer = Timer()
    torch.manual_seed(cfg.seed)
    out = output_dir_for(cfg)
    work = out.parent / f".{out.name}-work"
    prompts = load_prompts(cfg.dataset, cfg.lang)  # a bad dataset fails here, before any model is loaded
    reward_model, reward_tok = load_reward_model(cfg.reward_model)
    policy, tokenizer, start = load_start_policy(cfg.base_model, cfg.init_from)  # --init-from, else --base-model
    if reward_tok.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"reward model {cfg.reward_model} uses a different tokenizer from {start}; "
                        f"train the reward model on the same base (--base-model).")
    train_prompts, heldout, queries = prepare_prompts(cfg, tokenizer, prompts)
    plan = ppo_batch_plan(cfg.batch_size, cfg.mini_batch_size, len(train_prompts), cfg.epochs,
                          world_size=int(os.environ.get("WORLD_SIZE", "1")), max_steps=cfg.max_steps)

    # Resume: continue from the last saved step's weights, metrics and KL coefficient.
    saved = work / "saved"  # the last saved step: policy/, value/, state.json, replaced atomically as one folder
    if cfg.resume and (note := recover_interrupted_save(saved)):
        print(f"--resume: {note}.", flush=True)
    state = json.loads((saved / "state.json").read_text()) if cfg.resume and (saved / "state.json").is_file() else None
    if cfg.resume and state is None:
        print(f"--resume: no saved PPO state in {work}; starting from scratch.", flush=True)
    if state is None:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    done_steps = state["step"] if state else 0
    if done_steps >= plan["steps"]:
        print(f"--resume: all {plan['steps']} steps already done; writing the checkpoint.", flush=True)
    kl_coef = state["kl_coef"] if state else cfg.kl_coef

    value_source = saved / "value" if state else model_path(cfg.reward_model)
    value_model = build_value_model(value_source, cfg.value_freeze_layers, tokenizer.pad_token_id,
                                    zero_head=cfg.value_head == "zero" and state is None)
    ref_model = None  # TRL copies the policy it is given (full) or disables the adapters (LoRA)
    if state and cfg.mode == "full":
        # the reference stays the start: a copy of the resumed policy would measure KL from the resume point
        ref_model = policy
        policy, _ = load_causal_lm(str(saved / "policy"))

    TRLPPOConfig, PPOTrainer, trainer_module = _trl()
    amp_dtype = autocast_dtype(cfg.bf16, best_device())
    bf16 = amp_dtype is not None
    remaining = max(plan["steps"] - done_steps, 0)
    args = TRLPPOConfig(
        output_dir=str(work / "trl"),
        learning_rate=cfg.lora_lr if cfg.mode == "lora" and cfg.lora_lr else cfg.lr, num_ppo_epochs=cfg.ppo_epochs,
        per_device_train_batch_size=plan["per_device_train_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        local_rollout_forward_batch_size=plan["local_rollout_forward_batch_size"],
        num_mini_batches=plan["num_mini_batches"], total_episodes=remaining * cfg.batch_size,
        response_length=cfg.max_response_length, temperature=cfg.temperature, stop_token="eos",
        kl_coef=kl_coef, lam=cfg.gae_lambda, missing_eos_penalty=cfg.missing_eos_penalty,
        seed=cfg.seed + done_steps,
        bf16=bf16, fp16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        num_sample_generations=0, save_strategy="no", report_to=cfg.report_to, logging_steps=1,
        dataset_num_proc=None, disable_tqdm=False,
        optim=cfg.lora_optim if cfg.mode == "lora" and cfg.lora_optim else cfg.optim,
    )
    for key, value in (trl_overrides or {}).items():  # benchmarks compare against TRL's own defaults
        setattr(args, key, value)
    peft_config = None
    if cfg.mode == "lora":
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=lora_target_modules(policy), task_type="CAUSAL_LM", bias="none")
    train_dataset = datasets.Dataset.from_dict({"input_ids": queries})
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref_model,
                         reward_model=reward_model, train_dataset=train_dataset, value_model=value_model,
                         peft_config=peft_config)
    policy_model = trainer.policy_model
    if cfg.mode == "lora" and bf16:
        _frozen_block_linears_to(policy_model, amp_dtype)
    if state and cfg.mode == "lora":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(policy_model, load_file(saved / "policy" / "adapter_model.safetensors"))

    base_snapshot = None
    if cfg.mode == "lora":  # keep a fingerprint to prove the base weights stay bit-identical
        base_snapshot = {n: p.detach().clone() for n, p in policy_model.named_parameters() if "lora_" not in n}
    trainable, total = count_parameters(policy_model)
    v_trainable, v_total = count_parameters(value_model)

    log_path = work / METRICS_FILE
    if state and os.environ.get("RANK", "0") == "0":  # steps logged after the last save run again: log each once
        kept = [r for r in read_jsonl(log_path) if r["step"] <= done_steps]
        log_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    overopt_path = work / OVEROPT_FILE
    if state and os.environ.get("RANK", "0") == "0":
        keep_probes_up_to(overopt_path, done_steps)
    controller = None if cfg.fixed_kl else AdaptiveKLController(kl_coef, cfg.kl_target, cfg.kl_horizon)
    exact = _ExactKLCapture(cfg.temperature, trainer.stop_token_id)
    overopt = None
    if cfg.probe_every > 0 and heldout and trainer.accelerator.is_main_process:
        overopt = _ppo_probe(cfg, trainer, policy_model, tokenizer, reward_tok, heldout, overopt_path)
    # Close unfinished rollouts with EOS exactly when the reward model's inputs end with it (chat models).
    probe = _RewardProbe(tokenizer.eos_token_id if getattr(tokenizer, "chat_template", None) else None)

    def save_work(record):
        def write(folder: Path):  # atomic: a kill mid-save leaves the previous step's state whole
            _save_policy(policy_model, tokenizer, folder / "policy")
            trainer.accelerator.unwrap_model(trainer.model).value_model.save_pretrained(folder / "value")
            write_json(folder / "state.json", {"step": record["step"], "episode": record["episode"],
                                               "kl_coef": record.get("kl_coef_next", record["kl_coef"])})

        save_atomically(saved, write)

    save_every = max(1, plan["steps"] // 5)

    def after_step(record):
        record_step_rollouts(work, record, tokenizer, train_prompts, queries, cfg.max_response_length, cfg.report_to)
        exact_kl = record.get("kl_exact_per_token")
        exact_text = f"exact KL {exact_kl:.4f}, " if exact_kl is not None else ""
        print(f"step {record['step']}/{plan['steps']}: {exact_text}k1 KL {record['kl_per_token']:.4f} nats/token "
              f"({record['kl_per_sequence']:.3f} nats/seq), score {record['score']:.3f}, "
              f"beta {record['kl_coef']:.4f}, {record['seconds_per_step']:.1f} s", flush=True)
        if overopt is not None and (record["step"] % cfg.probe_every == 0 or record["step"] == plan["steps"]):
            overopt.run(record["step"], record["episode"])
        if record["step"] % save_every == 0 or record["step"] == plan["steps"]:
            save_work(record)
        if on_step is not None:
            on_step(record)

    if bf16:
        clear_autocast_cache_after_steps(trainer.optimizer)
    trainer.add_callback(_metrics_callback(log_path, probe, controller, done_steps,
                                           state["episode"] if state else 0, after_step, trainer.accelerator,
                                           steps_per_pass=len(train_prompts) // (cfg.batch_size), exact=exact,
                                           kl_estimator=cfg.kl_estimator))
    if remaining:
        # TRL 1.12's PPOTrainer builds its Accelerator without a mixed-precision setting, so its
        # `bf16=True` changes nothing; autocast here covers rollouts, scoring and the PPO updates.
        rank = int(os.environ.get("RANK", "0"))
        generator = torch.Generator().manual_seed((cfg.seed + done_steps) * 1009 + rank)  # resumed runs draw anew
        # where generate() would stop (the model's generation config) and TRL's stop token (the tokenizer's EOS):
        # stopping at either leaves TRL's post-processed responses unchanged
        rollouts = _engine_rollouts(trainer_module, cfg.temperature,
                                    stop_token_ids(tokenizer, policy_model, chat_end=False), generator)
        with (probe.installed(trainer_module, trainer.reward_model), autocast(cfg.bf16), rollouts,
              exact.installed(trainer_module)):
            if overopt is not None and done_steps == 0:  # the start, before any update
                overopt.run(0, 0)
            with _frozen_heap():
                trainer.train()
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return out

    if base_snapshot is not None:
        changed = [n for n, p in policy_model.named_parameters()
                   if n in base_snapshot and not torch.equal(p.detach(), base_snapshot[n])]
        if changed:
            raise RuntimeError(f"LoRA training changed base weights: {changed[:3]}")
    metrics = read_jsonl(log_path)
    info = {
        "mode": cfg.mode, "base_model": cfg.base_model, "init_from": start, "reward_model": cfg.reward_model,
        "steps": plan["steps"], "rollout_batch": cfg.batch_size, "trl_args": dict(plan),
        "policy_trainable_params": trainable, "policy_total_params": total,
        "value_trainable_params": v_trainable, "value_total_params": v_total,
        "lora_target_modules": list(peft_config.target_modules) if peft_config else None,
        "train_prompts": len(train_prompts), "heldout_prompts": len(heldout), "bf16": bf16,
        "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
        "value_head": cfg.value_head, "gae_lambda": trainer.args.lam,
        "kl_controller_estimator": None if cfg.fixed_kl else cfg.kl_estimator,
        "overopt_probes": len(read_overopt(work)),
        "seconds": timer.elapsed_s, "summary": summarize_metrics(metrics),
    }

    def write(folder: Path):
        _save_policy(policy_model, tokenizer, folder)
        if cfg.mode == "lora":  # name the base as the user did (not a local cache path), so it loads anywhere
            adapter_cfg_path = folder / "adapter_config.json"
            adapter_cfg = json.loads(adapter_cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = start
            adapter_cfg_path.write_text(json.dumps(adapter_cfg, indent=2))
        shutil.copy(log_path, folder / METRICS_FILE)
        if overopt_path.is_file():
            shutil.copy(overopt_path, folder / OVEROPT_FILE)
        copy_rollouts(work, folder)
        save_prompts(folder / HELDOUT_FILE, heldout)
        save_prompts(folder / TRAIN_PROMPTS_FILE, train_prompts)
        write_json(folder / PPO_INFO_FILE, info)
        write_json(folder / POLICY_INFO_FILE, policy_metadata("ppo", cfg.mode, cfg.base_model, start))
        write_json(folder / "training_config.json", asdict(cfg))
        _write_card(folder, cfg, info)

    save_atomically(out, write)
    print(f"PPO ({cfg.mode}) checkpoint saved to {out} ({timer.elapsed_s:.0f} s)", flush=True)
    report_push(out, cfg.push_to_hub)
    trainer.accelerator.wait_for_everyone()
    return out


@contextlib.contextmanager
def _frozen_heap():
    """TRL's PPO loop calls gc.collect() twice a step; with the models, datasets and libraries loaded, each full
    collection walked the whole heap (~0.3 s on a 2-core CPU). Objects alive before training are moved to the
    permanent generation (gc.freeze), so each collection walks only what the step created; the same objects
    stay alive either way."""
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _ppo_probe(cfg: PPOConfig, trainer, policy_model, tokenizer, reward_tokenizer, heldout: list[str],
               log_path: Path) -> OverOptProbe:
    """The over-optimisation probe of a PPO run (main process only): the policy as it trains, and the reference TRL
    measures KL from (full: its frozen copy; LoRA: the policy with its adapters disabled)."""
    policy = trainer.accelerator.unwrap_model(policy_model)
    reference = adapters_disabled(policy) if trainer.ref_model is None else holder(
        trainer.accelerator.unwrap_model(trainer.ref_model))
    return OverOptProbe(heldout[:cfg.probe_prompts], tokenizer, trainer.reward_model, reward_tokenizer, log_path,
                        temperature=cfg.temperature, max_new_tokens=cfg.probe_max_new_tokens or cfg.max_response_length,
                        reward_model_name=cfg.reward_model, judge_model=cfg.judge_model,
                        max_prompt_tokens=cfg.max_prompt_length, batch_size=16, device=trainer.accelerator.device,
                        use_policy=holder(policy), use_reference=reference)


def _frozen_block_linears_to(model, dtype: torch.dtype) -> int:
    """Hold the frozen Linear weights of a LoRA policy's blocks in `dtype` (bf16 under autocast).

    Autocast caches its bf16 copy only of weights that require grad, so a frozen base would be re-cast
    at every decode step of every rollout (the largest cost of a LoRA step on a CPU). Autocast runs
    these matmuls in bf16 anyway, so the results are the same; the tied LM head / embeddings stay
    fp32, the adapters stay fp32 (they train), and the base on disk is untouched. Returns the count.
    """
    tied = model.get_input_embeddings().weight
    n = 0
    for module in model.modules():
        if (isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
                and module.weight is not tied and module.weight.dtype != dtype):
            module.to(dtype)
            n += 1
    return n


def _save_policy(policy_model, tokenizer, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    policy_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_card(folder: Path, cfg: PPOConfig, info: dict):
    s = info["summary"]
    demo = cfg.profile == "demo" or "data/demo" in cfg.dataset
    data_line = (f"`{cfg.dataset}` — **embedded stand-in prompts written for this project in oasst1 format, not "
                 f"OpenAssistant/oasst1**" if demo else f"`{cfg.dataset}` (prompter messages only)")
    start = info["init_from"]
    metadata = {"library_name": "peft" if cfg.mode == "lora" else "transformers", "base_model": start,
                "tags": ["rlhf", "ppo", "trl", "rlhflab"] + (["lora"] if cfg.mode == "lora" else []),
                "datasets": [cfg.dataset], "pipeline_tag": "text-generation",
                "rlhflab": policy_metadata("ppo", cfg.mode, cfg.base_model, start)}
    lo, hi = KL_BAND
    kl_last, kl_name = band_kl(s) if s else (float("nan"), "k1")
    in_band = s and lo <= kl_last <= hi
    results = run_summary_table({f"ppo-{cfg.mode}": s}) if s else "no steps logged"  # as in report.md and the app
    lora = (f"LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout} on "
            f"{info['lora_target_modules']}; this folder holds only the adapter — load it onto `{start}`."
            if cfg.mode == "lora" else "All policy parameters trained.")
    sections = {
        "What this is": (f"A PPO policy ({cfg.mode}) fine-tuned from `{start}` against the frozen reward "
                         f"model `{cfg.reward_model}` with TRL 1.12's PPOTrainer. {lora}\n\nPrompts: {data_line}; "
                         f"{info['train_prompts']} training prompts, {info['heldout_prompts']} held out "
                         f"(`{HELDOUT_FILE}`, never trained on)."),
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
        "How it was made": f"`{command_line()}` in {info['seconds']:.0f} s; bf16 autocast: {info['bf16']}.",
    }
    write_model_card(folder, metadata, f"PPO policy ({cfg.mode})", sections)
