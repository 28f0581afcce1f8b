"""GRPO and RLOO training against the frozen reward model: the one module that touches TRL's GRPOTrainer and
RLOOTrainer (trl==1.12.0).

Around TRL it adds what PPO has (the shared parts live in rlhflab.training.online): the same prompts and held-out
split, rollouts on the decode engine, the reward computed the one way the lab computes it
(rlhflab.measure.scoring.score_responses), a metrics log with PPO's field names and units, resume after a kill, and
a checkpoint whose card says what it is.

TRL's GRPO and RLOO keep the KL coefficient (`beta`) fixed: neither has an adaptive controller. Here the same
controller as PPO's (Ziegler et al. 2019) moves `trainer.beta`, the attribute their losses read, after every step
from the KL per token that step logged.

The KL TRL logs (`kl_per_token`, named by `kl_estimator`) is an estimate from the sampled tokens:
- GRPO: k3 = exp(r) - r - 1 with r = log pi_ref - log pi per token (Schulman's estimator, >= 0), taken in the loss
  on the step's own samples, before the update (one optimisation pass per batch);
- RLOO: k1 = log pi - log pi_ref per token, as PPO logs it.
The exact KL (`kl_exact_per_token`: sum_v p log p/q at every completion token, under softmax(logits / temperature),
total over total tokens) needs both models' full logits at once, which TRL never holds (it keeps only the sampled
token's log-prob of each pass). With --kl-estimator exact (the default), or the sampled estimator TRL does not log,
each step's completions get one extra no-grad forward of the policy and one of the reference (same inputs as TRL's
passes, policy in eval mode), right after TRL scored them and before the update; the controller then follows it.
With TRL's own estimator (GRPO k3, RLOO k1) nothing is added and `kl_exact_per_token` is null."""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import shutil
from pathlib import Path

import torch

from rlhflab.config import GRPOConfig
from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings
from rlhflab.measure.overopt import OVEROPT_FILE, probe_card_sentence, read_overopt
from rlhflab.measure.ppo_metrics import KL_BAND, band_kl, format_gain, run_summary_table, summarize_metrics
from rlhflab.measure.scoring import score_responses
from rlhflab.models.hardware import best_device
from rlhflab.models.loading import count_parameters
from rlhflab.models.modes import evaluating
from rlhflab.models.precision import autocast, autocast_dtype
from rlhflab.models.prompts import format_prompt, with_system
from rlhflab.store.cards import Timer, how_it_was_made, markdown_table
from rlhflab.store.checkpoints import METRICS_FILE
from rlhflab.store.jsonio import read_jsonl, write_json
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
    pass_of,
    prompt_key,
    prompts_sentence,
    rollout_generator,
    rollout_writer,
    sample_rollouts,
    trim_probes,
    world_size,
)
from rlhflab.training.policy import (
    POLICY_METHODS,
    learning_rate,
    lora_config,
    policy_output_dir,
    prepare_resume,
    save_policy_checkpoint,
    trainer_metrics_callback,
)

KL_ESTIMATORS = {"grpo": "k3", "rloo": "k1"}


KL_STATE_FILE = "kl_controller.json"  # the KL coefficient for the next step, saved inside each Trainer checkpoint


MAX_MICRO_BATCH = 16  # completions per forward/backward pass; more per step are accumulated


# The private methods of TRL 1.12's trainers that lab_grpo_trainer overrides (TRL has no public hook for them): sha256
# (first 16 hex digits) of their source, checked by tests/test_trl_adapters.py so a TRL upgrade is read first.
TRL_OVERRIDDEN = {
    "GRPOTrainer._generate_single_turn": "03c33ff5cd8342ec",
    "GRPOTrainer._generate_and_score_completions": "db028931a84025f2",
    "GRPOTrainer._tokenize_prompts": "d2d27f7c9bfda85f",
    "GRPOTrainer._save_checkpoint": "ec91bde123649111",
    "RLOOTrainer._generate_single_turn": "f8a2730c406b119d",
    "RLOOTrainer._generate_and_score_completions": "a2ab3efec6e71d8f",
    "RLOOTrainer._tokenize_prompts": "da688fca7ff22f2d",
    "RLOOTrainer._save_checkpoint": "b6ee0a370c266b6f",
}


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


def trl_grpo_args(cfg: GRPOConfig, plan: dict, work: Path):
    """TRL's GRPOConfig or RLOOConfig for the run."""
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import RLOOConfig

    args = dict(
        output_dir=str(work), learning_rate=learning_rate(cfg), max_steps=plan["steps"],
        per_device_train_batch_size=plan["per_device_train_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        num_generations=cfg.num_generations, max_completion_length=cfg.max_response_length,
        temperature=cfg.temperature, num_iterations=1,
        beta=0.0,  # set on the trainer, with our reference: a non-zero beta here makes TRL load its own
        seed=cfg.seed, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, save_strategy="steps", save_steps=max(1, plan["steps"] // 5), save_total_limit=1,
        report_to=cfg.report_to, disable_tqdm=False, log_completions=False,
    )
    if cfg.algorithm == "grpo":
        args["scale_rewards"] = "none"  # the spec's advantage: reward minus the group's mean (no division by its std)
        return TRLGRPOConfig(**args)
    return RLOOConfig(**args)


# ---------------------------------------------------------------- the trainer
@functools.cache
def lab_grpo_trainer(algorithm: str) -> type:
    """TRL's GRPOTrainer or RLOOTrainer with the lab's prompt tokens, rollouts on the decode engine, the exact KL of
    each step's completions (when `exact_kl` is set) and its KL coefficient saved in every checkpoint."""
    from trl import GRPOTrainer, RLOOTrainer

    base = RLOOTrainer if algorithm == "rloo" else GRPOTrainer
    returns_logprobs = base is GRPOTrainer  # GRPO's generation returns (ids, logprobs), RLOO's the ids

    class LabTrainer(base):
        exact_kl: ExactKLSums | None = None  # set when each step's exact KL is measured
        generator: torch.Generator | None = None  # the rollouts' sampling stream, seeded at the first batch

        def _tokenize_prompts(self, prompts: list):
            # The prompts arrive formatted (format_prompt); their tokens are PPO's queries exactly. TRL's own call
            # would add the tokenizer's special tokens, a second BOS for tokenizers that add one.
            ids = [self.processing_class(p, add_special_tokens=False)["input_ids"] for p in prompts]
            return ids, None, {}

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
            """TRL's text-only generation path, the whole generation batch in one call on the decode engine under
            TRL's settings; vLLM, continuous batching, images, tools and min-p go to TRL's own path."""
            if (self.use_vllm or getattr(self, "use_transformers_continuous_batching", False) or images is not None
                    or multimodal_fields or getattr(self, "min_p", None) is not None or getattr(self, "tools", None)):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
            from trl.models.utils import unwrap_model_for_generation
            from trl.trainer.utils import pad

            device = self.accelerator.device
            if self.generator is None:  # a resumed run continues on a stream of its own
                self.generator = rollout_generator(self.args.seed, self.state.global_step,
                                                   self.accelerator.process_index)
            prompts = [torch.tensor(ids) for ids in prompt_ids]
            input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
            mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left").to(device)
            eos = self._tokenizer.eos_token_id
            settings = GenerationSettings(temperature=self.temperature, top_k=self.top_k or 0,
                                          top_p=self.top_p if self.top_p is not None else 1.0,
                                          repetition_penalty=self.repetition_penalty or 1.0,
                                          max_new_tokens=self.max_completion_length)
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                             generation_kwargs=self.generation_kwargs) as unwrapped:
                responses = sample_rollouts(unwrapped, input_ids, mask, settings, [eos],
                                            self._tokenizer.pad_token_id, self.generator)
            completion_ids = []
            for row in responses.cpu().tolist():  # TRL's: everything up to and including the first EOS
                completion_ids.append(row[:row.index(eos) + 1] if eos in row else row)
            return (completion_ids, None) if returns_logprobs else completion_ids

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if self.exact_kl is not None and self.model.training:
                self._add_exact_kl(output)
            return output

        @torch.no_grad()
        def _add_exact_kl(self, output: dict) -> None:
            """Exact-KL sums over the completion tokens of one generation batch: the policy as it sampled them
            (before this step's update) and the reference, each from one no-grad forward with TRL's inputs."""
            from trl.trainer.utils import use_adapter

            ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
            mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
            width = output["completion_ids"].shape[1]
            unwrapped = self.accelerator.unwrap_model(self.model)

            def logits(model, rows):  # as TRL's _get_per_token_logps_and_entropies: no position ids, / temperature
                out = model(input_ids=ids[rows], attention_mask=mask[rows], use_cache=False).logits
                return out[:, :-1][:, -width:].float() / self.temperature

            # the policy itself, without dropout (LoRA dropout would add noise to the measurement)
            with evaluating(unwrapped):
                step = self.args.per_device_train_batch_size
                for start in range(0, ids.shape[0], step):
                    rows = slice(start, start + step)
                    policy_logits = logits(self.model, rows)
                    if self.ref_model is not None:
                        ref_logits = logits(self.ref_model, rows)
                    else:  # LoRA: the base, adapters disabled, as TRL's reference pass
                        ref_name = "ref" if "ref" in getattr(unwrapped, "peft_config", {}) else None
                        with use_adapter(unwrapped, adapter_name=ref_name):
                            ref_logits = logits(self.model, rows)
                    self.exact_kl.add_logits(policy_logits, ref_logits, output["completion_ids"][rows],
                                             output["completion_mask"][rows])

        def _save_checkpoint(self, model, trial):
            if self.args.should_save:  # before TRL writes trainer_state.json, which marks the checkpoint complete
                folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / KL_STATE_FILE, {"kl_coef": self.beta})
            super()._save_checkpoint(model, trial)

        def use_reference(self, reference) -> None:
            """A frozen copy of the start as the reference. TRL would reload `config._name_or_path`, which for a
            merged SFT adapter (--init-from) names the SFT's base, not the start: KL would not begin at 0."""
            from trl.models import prepare_deepspeed, prepare_fsdp

            reference.eval().requires_grad_(False)
            if self.is_deepspeed_enabled:
                self.ref_model = prepare_deepspeed(reference, self.accelerator)
            elif self.is_fsdp_enabled:
                self.ref_model = prepare_fsdp(reference, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(reference, evaluation_mode=True)

    LabTrainer.__name__ = f"Lab{base.__name__}"
    return LabTrainer


class RewardModelScore:
    """The frozen reward model as TRL's reward function, scoring exactly as the evaluation and the app do.

    TRL hands over each completion decoded without special tokens, so a finished response has lost its EOS and a
    response cut at --max-response-length never had one; score_responses appends EOS to both (chat models), i.e.
    every response is scored as a closed turn, the way PPO closes a cut rollout before scoring. Records each
    rollout's score and prompt key (rlhflab.training.online.prompt_key, the same key PPO logs) for the log.
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


def step_record(cfg: GRPOConfig, trainer, reward: RewardModelScore, kl: KLCoefficient, plan: dict,
                steps_per_pass: int):
    """to_record for policy.trainer_metrics_callback: TRL's log of one step as the lab's record (PPO's names and
    units), moving the KL coefficient after it."""
    estimator = KL_ESTIMATORS[cfg.algorithm]

    def to_record(logs: dict, state) -> dict:
        kl_logged = float(logs.get("kl", float("nan")))
        length = float(logs.get("completions/mean_length", float("nan")))
        rollout_scores, rollout_prompts = reward.pop_rollouts()
        kls = trainer.exact_kl.pop(trainer.accelerator) if trainer.exact_kl is not None else None
        record = {
            "pass": pass_of(state.global_step, steps_per_pass),  # pass over the prompts
            "episode": state.global_step * plan["completions_per_step"],
            "kl_per_token": kl_logged, "kl_estimator": estimator, "kl_per_sequence": kl_logged * length,
            # exact KL over the vocabulary, per token over the same completion tokens (null: not measured)
            "kl_exact_per_token": kls["exact"] if kls else None,
            "kl_controller_estimator": None,
            "kl_coef": float(trainer.beta),
            "score": float(logs["reward"]), "score_std": float(logs.get("reward_std", float("nan"))),
            "entropy_per_token": float(logs.get("entropy", float("nan"))), "response_tokens_mean": length,
            "clipped_ratio": float(logs.get("completions/clipped_ratio", float("nan"))),  # responses cut at the limit
            "clipfrac": float(logs.get("clip_ratio/region_mean", float("nan"))),  # ratios clipped in the loss
            "loss": float(logs.get("loss", float("nan"))),
            # this process's rollouts (all of them in a single-process run): score and prompt key each
            "rollout_scores": rollout_scores, "rollout_prompts": rollout_prompts,
        }
        record["kl_controller_estimator"] = kl.after_step(kls, estimator, kl_logged, plan["completions_per_step"])
        trainer.beta = trainer.args.beta = kl.value
        record["kl_coef_next"] = float(trainer.beta)
        return record

    return to_record


def resume(cfg: GRPOConfig, work: Path) -> tuple[Path | None, KLCoefficient]:
    """(the Trainer checkpoint to resume from or None, the KL coefficient, with the value saved there)."""
    resume_from = prepare_resume(work, work / METRICS_FILE, cfg.resume)
    if resume_from is None:
        return None, KLCoefficient(cfg, cfg.kl_coef)
    trim_probes(work, int(resume_from.name.rsplit("-", 1)[1]))
    saved = resume_from / KL_STATE_FILE
    return resume_from, KLCoefficient(cfg, json.loads(saved.read_text())["kl_coef"] if saved.is_file() else cfg.kl_coef)


def prompt_dataset(run: OnlineStart, system: str | None = None):
    """The training prompts as TRL's dataset: formatted for the policy, as asked (with `system`) for the reward model,
    keyed as PPO's."""
    import datasets

    asked = [with_system(p, system) for p in run.train_prompts]
    return datasets.Dataset.from_dict({
        "prompt": [format_prompt(run.tokenizer, p) for p in asked],
        "query": asked,  # the reward model formats the asked prompt itself (score_responses), as PPO's tokens hold it
        "prompt_key": [prompt_key(q) for q in run.queries]})


# ---------------------------------------------------------------- training
def train_grpo(cfg: GRPOConfig, on_step=None, trainer_class: type | None = None) -> Path:
    """Run GRPO (or RLOO) against the frozen reward model, full or LoRA; write the checkpoint; return its path.

    `on_step(record)` runs after each step's record is written; `trainer_class` replaces lab_grpo_trainer(algorithm)."""
    method = cfg.algorithm
    timer = Timer()
    torch.manual_seed(cfg.seed)
    out = policy_output_dir(method, cfg.mode, cfg.output_dir)
    work = out.parent / f".{out.name}-work"  # Trainer checkpoints, for --resume
    run = load_online_start(cfg)  # every input error stops here, before anything is written
    plan = grpo_batch_plan(cfg.batch_size, cfg.num_generations, len(run.train_prompts), cfg.epochs, world_size(),
                           cfg.max_steps)
    resume_from, kl = resume(cfg, work)
    reference = copy.deepcopy(run.policy) if cfg.mode == "full" else None  # LoRA: the base with adapters disabled

    reward = RewardModelScore(run.reward_model, run.tokenizer)
    trainer = (trainer_class or lab_grpo_trainer(method))(
        model=run.policy, reward_funcs=[reward], args=trl_grpo_args(cfg, plan, work),
        train_dataset=prompt_dataset(run, cfg.system_prompt), processing_class=run.tokenizer,
        peft_config=lora_config(cfg, run.policy) if cfg.mode == "lora" else None)
    run.reward_model.to(trainer.accelerator.device)
    if reference is not None:
        trainer.use_reference(reference)
    trainer.beta = trainer.args.beta = kl.value
    amp_dtype = autocast_dtype(cfg.bf16, best_device())
    if cfg.mode == "lora" and amp_dtype is not None:
        frozen_block_linears_to(trainer.model, amp_dtype)
    if cfg.kl_estimator != KL_ESTIMATORS[method]:  # TRL does not log it: one extra no-grad forward of each model
        trainer.exact_kl = ExactKLSums()
    probe = build_probe(cfg, trainer.accelerator, trainer.model, trainer.ref_model, run, work / OVEROPT_FILE)
    trainer.add_callback(trainer_metrics_callback(
        work / METRICS_FILE, step_record(cfg, trainer, reward, kl, plan, len(run.train_prompts) // cfg.batch_size),
        after_each_step(cfg, plan["steps"], KL_ESTIMATORS[method], probe, on_step=on_step,
                        rollouts=rollout_writer(cfg, run, work, lambda: trainer.exact_kl))))
    if amp_dtype is not None:
        trainer.add_callback(_clear_autocast_cache_callback())
    # Autocast (not TRL's bf16 flag) covers generation, the reference, scoring and the updates alike, as in PPO.
    with autocast(cfg.bf16) if amp_dtype is not None else contextlib.nullcontext():
        if probe is not None and resume_from is None:  # the start, before any update
            probe.run(0, 0)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return out

    info = run_info(cfg, plan, trainer, run, work, timer, amp_dtype is not None)

    def extra(folder: Path):
        copy_probes(work, folder)
        run.save_prompts(folder)

    save_policy_checkpoint(out, trainer.accelerator.unwrap_model(trainer.model), run.tokenizer, cfg, method=method,
                           start=run.start, info=info, title=f"{POLICY_METHODS[method][0]} policy ({cfg.mode})",
                           sections=card_sections(cfg, method, run.start, info), metrics_path=work / METRICS_FILE,
                           extra=extra, datasets=[cfg.dataset])
    # The Trainer checkpoints hold optimizer state (twice the model, for AdamW): once the policy is saved they are
    # only disk used, and a finished run has nothing to resume.
    shutil.rmtree(work, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return out


def run_info(cfg: GRPOConfig, plan: dict, trainer, run: OnlineStart, work: Path, timer: Timer, bf16: bool) -> dict:
    """What the run was and what it measured (policy_info.json, beside the card's block)."""
    trainable, total = count_parameters(trainer.model)
    peft_config = getattr(trainer.model, "peft_config", {}).get("default") if cfg.mode == "lora" else None
    return {
        "algorithm": cfg.algorithm, "reward_model": cfg.reward_model, "steps": plan["steps"],
        "prompts_per_step": cfg.batch_size, "num_generations": cfg.num_generations,
        "responses_per_step": plan["completions_per_step"],
        "trl_args": {k: plan[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps")},
        "policy_trainable_params": trainable, "policy_total_params": total,
        "lora_target_modules": sorted(peft_config.target_modules) if peft_config else None,
        "train_prompts": len(run.train_prompts), "heldout_prompts": len(run.heldout), "bf16": bf16,
        "kl_estimator": KL_ESTIMATORS[cfg.algorithm], "loss_type": getattr(trainer.args, "loss_type", None),
        "kl_controller_estimator": None if cfg.fixed_kl else cfg.kl_estimator,
        "overopt_probes": len(read_overopt(work)),
        "seconds": timer.elapsed_s, "summary": summarize_metrics(read_jsonl(work / METRICS_FILE)),
    }


# ---------------------------------------------------------------- the card
def card_sections(cfg: GRPOConfig, method: str, start: str, info: dict) -> dict[str, str]:
    s = info["summary"]
    name = POLICY_METHODS[method][0]
    nan = float("nan")
    lo, hi = KL_BAND
    kl_last, kl_name = band_kl(s) if s else (nan, KL_ESTIMATORS[method])
    run = policy_output_dir(method, cfg.mode).name
    results = run_summary_table({run: s}) if s else "no steps logged"  # as in report.md and the app
    how = (f"TRL 1.12's {'GRPOTrainer' if method == 'grpo' else 'RLOOTrainer'}: {cfg.num_generations} responses per "
           f"prompt, each response's advantage its reward minus "
           + ("the mean of its group" if method == "grpo" else "the mean of the other responses to its prompt")
           + ", KL to the reference "
           + ("in the loss (k3 per token)" if method == "grpo" else "subtracted from the reward (k1 per sequence)"))
    return {
        "What this is": (f"A {name} policy ({cfg.mode}) fine-tuned from `{start}` against the frozen reward model "
                         f"`{cfg.reward_model}` with {how}. {lora_sentence(cfg, info, start)}\n\n"
                         f"{prompts_sentence(cfg, info)}"),
        "Parameters": markdown_table(["model", "trainable", "total"], [
            ["policy", f"{info['policy_trainable_params']:,}", f"{info['policy_total_params']:,}"]]),
        "Training result": (f"{info['steps']} steps of {cfg.batch_size} prompts x {cfg.num_generations} responses "
                            f"(means over {s.get('window_label', 'no steps')}):\n\n{results}\n\nReward-model score "
                            f"gain, paired by prompt (last pass minus first pass, 95 % bootstrap interval): "
                            f"**{format_gain(s.get('paired_score_gain'))}**.\n\nMean per-token KL over the last steps "
                            f"{kl_last:.4f} nats/token ({kl_name}; TRL's {KL_ESTIMATORS[method]} estimate "
                            f"{s.get('kl_per_token_last', nan):.4f}) — "
                            f"{'inside' if s and lo <= kl_last <= hi else 'outside'} the "
                            f"target band {lo}–{hi}; KL coefficient "
                            f"{'fixed' if cfg.fixed_kl else 'adaptive, following the ' + cfg.kl_estimator + ' KL'}, "
                            f"final {s.get('kl_coef_final', nan):.4f}.\n\nPer-step metrics: `{METRICS_FILE}` (KL per "
                            f"token and per sequence in nats: `kl_per_token` TRL's, estimator in `kl_estimator`; "
                            f"`kl_exact_per_token` exact over the vocabulary)."
                            + probe_card_sentence(cfg, info["heldout_prompts"])),
        "Hyperparameters": markdown_table(["hyperparameter", "value"],
                                          [[k, v] for k, v in vars(cfg).items() if k != "push_to_hub"]),
        "How it was made": how_it_was_made(info["seconds"], cfg.bf16),
    }
