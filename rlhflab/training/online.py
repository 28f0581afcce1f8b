"""What the online-RL trainers (PPO, GRPO, RLOO) share: the start (policy, frozen reward model, prompts and their
held-out split), the adaptive KL controller, rollouts on the decode engine, exact-KL sums over the rollout tokens,
the over-optimisation probe, and what happens after each step (one printed line, the probe, the caller's hook).

Each trainer plugs these into its TRL trainer class by subclassing it (rlhflab.training.ppo, rlhflab.training.grpo);
this module imports no trainer."""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhflab.data.oasst1 import load_prompts, save_prompts, split_prompts
from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings, sample_responses
from rlhflab.measure.kl import KLAccumulator, kl_sums
from rlhflab.measure.overopt import OVEROPT_FILE, OverOptProbe, adapters_disabled, holder
from rlhflab.measure.overopt import keep_up_to as keep_probes_up_to
from rlhflab.models.loading import load_reward_model
from rlhflab.models.modes import evaluating
from rlhflab.models.prompts import format_prompt, with_system
from rlhflab.store.rollouts import copy_rollouts, record_step_rollouts
from rlhflab.training.policy import is_stand_in, load_start_policy

HELDOUT_FILE = "heldout_prompts.jsonl"
TRAIN_PROMPTS_FILE = "train_prompts.jsonl"


def main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------- KL coefficient
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


class KLCoefficient:
    """The KL coefficient of a run: fixed (--fixed-kl), or moved after every step by the adaptive controller from
    the per-token KL it follows (--kl-estimator when that was measured, else the estimate TRL logged)."""

    def __init__(self, cfg, initial: float):
        self.value = initial
        self.estimator = cfg.kl_estimator
        self.controller = None if cfg.fixed_kl else AdaptiveKLController(initial, cfg.kl_target, cfg.kl_horizon)

    def after_step(self, measured: dict | None, trl_estimator: str, trl_kl: float, n_episodes: int) -> str | None:
        """Move the coefficient (adaptive only); returns the estimator followed, None when the coefficient is fixed.
        `measured` maps estimator names to per-token KL the lab measured this step (None: nothing measured)."""
        if self.controller is None:
            return None
        follows = self.estimator if measured else trl_estimator
        kl = (measured or {}).get(follows, trl_kl)
        if math.isfinite(kl):  # every process moves it alike (the KL is reduced over processes)
            self.value = self.controller.update(kl, n_episodes)
        return follows


# ---------------------------------------------------------------- the start: policy, reward model, prompts
def prompt_key(token_ids: list[int]) -> int:
    """A stable key for a prompt (its token ids), to pair a prompt's rollouts across passes."""
    return zlib.crc32(bytes(str(token_ids), "ascii"))


def prepare_prompts(cfg, tokenizer, prompts: list[str] | None = None) -> tuple[list[str], list[str], list[list[int]]]:
    """(train prompts, held-out prompts, tokenized train queries); over-long prompts are dropped."""
    prompts = load_prompts(cfg.dataset, cfg.lang) if prompts is None else prompts
    train, heldout = split_prompts(prompts, cfg.num_prompts, cfg.num_heldout,
                                   cfg.seed if cfg.data_seed is None else cfg.data_seed)
    kept, queries = [], []
    for p in train:
        asked = format_prompt(tokenizer, with_system(p, cfg.system_prompt))
        ids = tokenizer(asked, add_special_tokens=False)["input_ids"]
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
    return kept[:whole], heldout, queries[:whole]


@dataclass
class OnlineStart:
    """What an online-RL run starts from."""

    policy: object
    tokenizer: object
    start: str  # the name the policy was loaded by (--init-from, else --base-model)
    reward_model: object
    reward_tokenizer: object
    train_prompts: list[str]
    heldout: list[str]
    queries: list[list[int]]  # the train prompts' token ids, formatted as the policy is prompted

    def save_prompts(self, folder: Path) -> None:
        save_prompts(folder / HELDOUT_FILE, self.heldout)
        save_prompts(folder / TRAIN_PROMPTS_FILE, self.train_prompts)


def load_online_start(cfg) -> OnlineStart:
    """Prompts, frozen reward model and start policy; every input error stops here, before anything is written."""
    prompts = load_prompts(cfg.dataset, cfg.lang)  # a bad dataset fails before any model is loaded
    reward_model, reward_tok = load_reward_model(cfg.reward_model)
    policy, tokenizer, start = load_start_policy(cfg.base_model, cfg.init_from)
    if reward_tok.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"reward model {cfg.reward_model} uses a different tokenizer from {start}; train the reward "
                        f"model on the same base (--base-model).")
    train, heldout, queries = prepare_prompts(cfg, tokenizer, prompts)
    return OnlineStart(policy, tokenizer, start, reward_model, reward_tok, train, heldout, queries)


# ---------------------------------------------------------------- rollouts
def rollout_generator(seed: int, done_steps: int, rank: int) -> torch.Generator:
    """The rollouts' sampling stream: its own per process, and a resumed run draws anew."""
    return torch.Generator().manual_seed((seed + done_steps) * 1009 + rank)


def sample_rollouts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
                    stop_ids: list[int], pad_id: int, generator: torch.Generator) -> torch.Tensor:
    """A whole rollout batch in one call of the lab's sampler (rlhflab.generation.sampling.sample_responses, the
    app's and the evaluation's; the decode engine where it applies), the policy in eval mode (no dropout)."""
    with evaluating(model):
        return sample_responses(model, input_ids, attention_mask, settings, stop_ids, pad_id, generator=generator)


def frozen_block_linears_to(model, dtype: torch.dtype) -> int:
    """Hold the frozen Linear weights of a LoRA policy's blocks in `dtype` (bf16 under autocast).

    Autocast caches its bf16 copy only of weights that require grad, so a frozen base would be re-cast
    at every decode step of every rollout. Autocast runs these matmuls in bf16 anyway, so the results are the
    same; the tied LM head / embeddings stay fp32, the adapters stay fp32 (they train), and the base on disk is
    untouched. Returns the count.
    """
    tied = model.get_input_embeddings().weight
    n = 0
    for module in model.modules():
        if (isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
                and module.weight is not tied and module.weight.dtype != dtype):
            module.to(dtype)
            n += 1
    return n


class ExactKLSums(KLAccumulator):
    """Exact, k1 and k3 KL sums over one step's rollout tokens (rlhflab.measure.kl.kl_sums), from policy and
    reference logits of the same tokens; `pop` gives the step's per-token values, reduced over processes."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[list[int], float]] = []  # this step's sequences: (response token ids, exact KL)

    def add_logits(self, policy_logits: torch.Tensor, reference_logits: torch.Tensor, tokens: torch.Tensor,
                   mask: torch.Tensor) -> None:
        self.add(kl_sums(policy_logits, reference_logits, tokens, mask, rows=self.rows))

    def pop_rows(self) -> list[tuple[list[int], float]]:
        """The sequences measured since the last call (the step's rollouts, for rollouts.jsonl)."""
        rows, self.rows = self.rows, []
        return rows


# ---------------------------------------------------------------- the probe and each step's end
def build_probe(cfg, accelerator, policy, reference, start: OnlineStart, log_path: Path) -> OverOptProbe | None:
    """The over-optimisation probe (main process only; None when off): the policy as it trains, and the reference
    the trainer measures KL from (full: its frozen copy; LoRA, `reference` None: the policy, adapters disabled)."""
    if not (cfg.probe_every > 0 and start.heldout and accelerator.is_main_process):
        return None
    policy = accelerator.unwrap_model(policy)
    use_reference = adapters_disabled(policy) if reference is None else holder(accelerator.unwrap_model(reference))
    asked = [with_system(p, cfg.system_prompt) for p in start.heldout[:cfg.probe_prompts]]
    return OverOptProbe(asked, start.tokenizer, start.reward_model,
                        start.reward_tokenizer, log_path, temperature=cfg.temperature,
                        max_new_tokens=cfg.probe_max_new_tokens or cfg.max_response_length,
                        reward_model_name=cfg.reward_model,
                        judge_model=cfg.judge_model, max_prompt_tokens=cfg.max_prompt_length, batch_size=16,
                        device=accelerator.device, use_policy=holder(policy), use_reference=use_reference)


def trim_probes(work: Path, done_steps: int) -> None:
    """A resumed run logs the steps after its last save again: keep the probes up to that save."""
    if main_rank():
        keep_probes_up_to(work / OVEROPT_FILE, done_steps)


def copy_probes(work: Path, folder: Path) -> None:
    """The probes and every step's rollouts (rlhflab.store.rollouts), from the work folder into the checkpoint."""
    if (work / OVEROPT_FILE).is_file():
        (folder / OVEROPT_FILE).write_bytes((work / OVEROPT_FILE).read_bytes())
    copy_rollouts(work, folder)


def rollout_writer(cfg, start: OnlineStart, work: Path,
                   exact_kl: Callable[[], ExactKLSums | None]) -> Callable[[dict], None]:
    """Each step's rollouts (prompt, response, score, exact KL, length, cut) into work/rollouts.jsonl, and to the
    tracker as a table with --report-to (rlhflab.store.rollouts); `exact_kl()` is the trainer's ExactKLSums, whose
    rows are the step's measured sequences."""
    def write(record: dict) -> None:
        sums = exact_kl()
        record_step_rollouts(work, record, start.tokenizer, start.train_prompts, start.queries,
                             sums.pop_rows() if sums is not None else [], cfg.max_response_length, cfg.report_to)

    return write


def pass_of(step: int, steps_per_pass: int) -> int:
    """The pass over the training prompts that `step` (1-based) belongs to."""
    return (step - 1) // steps_per_pass + 1 if steps_per_pass else 1


def after_each_step(cfg, steps: int, trl_estimator: str, probe: OverOptProbe | None,
                    save: Callable[[dict], None] | None = None, on_step: Callable[[dict], None] | None = None,
                    rollouts: Callable[[dict], None] | None = None):
    """What follows each logged step, in order: the step's rollouts written (rollout_writer), one printed line, the
    probe when due, `save`, the caller's hook."""

    def after_step(record: dict) -> None:
        if rollouts is not None:
            rollouts(record)
        exact_kl = record.get("kl_exact_per_token")
        exact_text = f"exact KL {exact_kl:.4f}, " if exact_kl is not None else ""
        print(f"step {record['step']}/{steps}: {exact_text}{trl_estimator} KL {record['kl_per_token']:.4f} nats/token "
              f"({record['kl_per_sequence']:.3f} nats/seq), score {record['score']:.3f}, beta {record['kl_coef']:.4f}, "
              f"{record['seconds_per_step']:.1f} s", flush=True)
        if probe is not None and (record["step"] % cfg.probe_every == 0 or record["step"] == steps):
            probe.run(record["step"], record["episode"])
        if save is not None:
            save(record)
        if on_step is not None:
            on_step(record)

    return after_step


# ---------------------------------------------------------------- the card
def prompts_sentence(cfg, info: dict) -> str:
    data = (f"`{cfg.dataset}` — **embedded stand-in prompts written for this project in oasst1 format, not "
            f"OpenAssistant/oasst1**" if is_stand_in(cfg) else f"`{cfg.dataset}` (prompter messages only)")
    return (f"Prompts: {data}; {info['train_prompts']} training prompts, {info['heldout_prompts']} held out "
            f"(`{HELDOUT_FILE}`, never trained on).")


def lora_sentence(cfg, info: dict, start: str) -> str:
    if cfg.mode != "lora":
        return "All policy parameters trained."
    return (f"LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout} on "
            f"{info['lora_target_modules']}; this folder holds only the adapter — load it onto `{start}`.")
