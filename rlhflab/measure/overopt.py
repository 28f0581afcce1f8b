"""The over-optimisation probe: while a policy trains, every few steps it answers a fixed set of held-out prompts,
and the answers are scored by the reward model it is trained against and by an independent judge, next to the exact
KL from the reference. Plotted against KL, the training reward keeps rising while the judge's score turns down once
the policy hacks the reward model (the gold-model protocol of the reward over-optimisation literature).

`overopt.jsonl` (in the run's work folder while it trains, copied into the checkpoint) holds one record per probe:

- `step`: the training step the policy has completed (0 = before training); `episode`: rollouts seen so far.
- `n_prompts`: held-out prompts answered (always the first `probe_prompts` of the run's held-out set).
- `kl_exact_per_token`: exact KL(policy ‖ reference), Σ_v p log p/q at every generated token (end-of-turn token
  included, no re-tokenising), under the sampling distribution softmax(logits / temperature), as total KL ÷ total
  tokens, in nats/token; `kl_exact_ci`: [low, high], 95 % bootstrap over prompts (rlhflab.measure.stats.ratio_bootstrap_ci).
- `rm_score_mean`, `rm_score_ci`: the training reward model's mean score and its 95 % bootstrap interval.
- `judge_score_mean`, `judge_score_ci`: the judge's, or null when no judge could be loaded.
- `response_tokens_mean`: generated tokens per response (end-of-turn token included: the tokens the KL is over).
- `temperature`: the sampling temperature (the run's; pure temperature sampling, no top-k/top-p, seed fixed).
- `judge_model`, `reward_model`: the two scorers as configured (`judge_model` null when it was not found).
- `responses`: the answers (in prompt order); `cut_rate`: the share that hit `max_new_tokens` unfinished.
- `rm_scores`, `judge_scores`: each prompt's score (the same prompts, in order, at every probe).
- `rm_change_vs_step0`, `judge_change_vs_step0`: [mean, low, high] of the score change against the step-0 probe,
  paired by prompt (95 % bootstrap over prompts; the probe's fixed sampling seed makes the pairs share noise);
  null at step 0 or without a step-0 probe.
- `rm_mde`, `judge_mde`: the minimal detectable effect of that change — the smallest true mean change a two-sided
  paired test at alpha 0.05 would detect with 80 % power, (z_0.975 + z_0.8) · SD(change) / √n.
- `seconds`: wall time of the probe."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from rlhflab.models.modes import evaluating

OVEROPT_FILE = "overopt.jsonl"


PROBE_SEED = 20240  # the same sampling noise at every probe: differences between probes are the policy's


BOOTSTRAP_SAMPLES = 1000


MDE_Z = 1.959963984540054 + 0.8416212335729143  # two-sided alpha 0.05, power 0.8


def paired_change(scores: list[float], baseline: list[float] | None, seed: int) -> tuple[list | None, float | None]:
    """([mean, low, high] of scores − baseline paired by prompt, 95 % bootstrap; minimal detectable effect), or
    (None, None) without a baseline of the same prompts."""
    import numpy as np

    from rlhflab.measure.stats import paired_bootstrap_diff

    if not baseline or len(baseline) != len(scores) or len(scores) < 2:
        return None, None
    diff = np.asarray(scores, float) - np.asarray(baseline, float)
    return (list(paired_bootstrap_diff(scores, baseline, samples=BOOTSTRAP_SAMPLES, seed=seed)),
            float(MDE_Z * diff.std(ddof=1) / np.sqrt(diff.size)))


def read_overopt(folder: str | Path) -> list[dict]:
    """The probe records of a run folder (a checkpoint or a work folder), oldest first; [] when there are none."""
    path = Path(folder) / OVEROPT_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write: the records before it still hold
            break
    return records


def keep_up_to(path: str | Path, step: int) -> None:
    """On --resume: drop the probe records after the last saved step (the steps after it run again)."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_overopt(path.parent) if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


JUDGE_COMMAND = "python training/reward.py --role judge --profile demo"


def probe_card_sentence(cfg, heldout_prompts: int) -> str:
    """The model card's sentence on a run's probe (PPO's and GRPO's cards), empty when the probe was off."""
    if cfg.probe_every <= 0:
        return ""
    return (f" Over-optimisation probe: `{OVEROPT_FILE}` (every {cfg.probe_every} steps, "
            f"{min(cfg.probe_prompts, heldout_prompts)} held-out prompts: reward-model and judge scores against "
            f"exact KL).")


def load_judge(name: str | None, device=None, reward_model: str | None = None):
    """(judge model, its tokenizer, None) or (None, None, a one-line note saying why there is none): a missing or
    unloadable judge never stops training or an evaluation, it only leaves the judge's numbers empty. The training
    reward model itself is refused (UserError): a judge is a reward model no policy was trained against."""
    from rlhflab.errors import UserError
    from rlhflab.models.loading import load_reward_model

    if not name:
        return None, None, f"no judge given (--judge-model); train one with `{JUDGE_COMMAND}`"
    local = Path(name).exists()
    if reward_model and (name == reward_model or (local and Path(reward_model).exists()
                                                  and Path(name).resolve() == Path(reward_model).resolve())):
        raise UserError(f"--judge-model {name} is the training reward model: a judge must be a reward model no policy "
                        f"was trained against; train one with `{JUDGE_COMMAND}`.")
    if not local and not (name.count("/") == 1 and not name.startswith((".", "/"))):  # neither a folder nor a Hub id
        return None, None, f"no judge at {name}; train one with `{JUDGE_COMMAND}`"
    try:
        model, tokenizer = load_reward_model(name)
    except (UserError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, None, f"the judge {name} could not be loaded ({reason})"
    if device is not None:
        model.to(device)
    return model, tokenizer, None


class OverOptProbe:
    """Generates, scores and measures on the fixed prompts; `run` appends one record to `log_path`.

    `use_policy()` / `use_reference()` are context managers yielding the model (so a LoRA policy and its base, the
    reference, share weights: the reference is the same model with its adapters disabled)."""

    def __init__(self, prompts: list, tokenizer, reward_model, reward_tokenizer, log_path: str | Path, *,
                 temperature: float, max_new_tokens: int, reward_model_name: str, judge_model: str | None,
                 max_prompt_tokens: int = 1024, batch_size: int = 16, device=None, use_policy=None,
                 use_reference=None):
        self.prompts = list(prompts)
        self.tokenizer, self.reward_model, self.reward_tokenizer = tokenizer, reward_model, reward_tokenizer
        self.log_path = Path(log_path)
        self.temperature, self.max_new_tokens = float(temperature), int(max_new_tokens)
        self.reward_model_name = reward_model_name
        self.max_prompt_tokens, self.batch_size = max_prompt_tokens, batch_size
        # the training reward model is refused as its own judge (UserError), as the evaluation refuses it
        self.judge, self.judge_tokenizer, self.note = load_judge(judge_model, device, reward_model=reward_model_name)
        self.judge_model_name = judge_model if self.judge is not None else None
        self.use_policy, self.use_reference = use_policy, use_reference
        self.baseline: dict | None = None  # the step-0 probe's per-prompt scores (read back from the log on resume)
        if self.note:
            print(f"note: no judge model for the over-optimisation probe: {self.note}. It records the training reward "
                  f"model's score and the KL only (judge fields null).", flush=True)

    def settings(self):
        from rlhflab.generation.sampling import GenerationSettings

        # pure temperature sampling: the distribution the exact KL below is measured under, and the rollouts'
        return GenerationSettings(temperature=self.temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                  max_new_tokens=self.max_new_tokens, seed=PROBE_SEED).validate()

    def run(self, step: int, episode: int, use_policy=None, use_reference=None) -> dict:
        from rlhflab.generation.sampling import generate_batch
        from rlhflab.measure.kl import exact_kl_of_responses
        from rlhflab.measure.scoring import score_responses
        from rlhflab.measure.stats import bootstrap_ci, ratio_bootstrap_ci
        from rlhflab.store.jsonio import append_jsonl

        start = time.perf_counter()
        use_policy, use_reference = use_policy or self.use_policy, use_reference or self.use_reference
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the probe's fixed seed must not reset training's RNG
            with use_policy() as model:
                gens = generate_batch(model, self.tokenizer, self.prompts, self.settings(), self.batch_size,
                                      self.max_prompt_tokens)
        response_ids = [g.token_ids or [] for g in gens]
        texts = [g.text for g in gens]
        sums, counts = exact_kl_of_responses(use_policy, use_reference, self.tokenizer, self.prompts, response_ids,
                                             temperature=self.temperature, batch_size=self.batch_size,
                                             max_prompt_tokens=self.max_prompt_tokens)
        rm = score_responses(self.reward_model, self.reward_tokenizer, self.prompts, texts, self.batch_size)
        judge = (score_responses(self.judge, self.judge_tokenizer, self.prompts, texts, self.batch_size)
                 if self.judge is not None else None)
        kl, kl_lo, kl_hi = ratio_bootstrap_ci(sums, counts, samples=BOOTSTRAP_SAMPLES, seed=step)
        rm_mean, rm_lo, rm_hi = bootstrap_ci(rm, samples=BOOTSTRAP_SAMPLES, seed=step)
        record = {
            "step": step, "episode": episode, "n_prompts": len(self.prompts),
            "kl_exact_per_token": kl, "kl_exact_ci": [kl_lo, kl_hi],
            "rm_score_mean": rm_mean, "rm_score_ci": [rm_lo, rm_hi],
            "judge_score_mean": None, "judge_score_ci": None,
            "response_tokens_mean": sum(counts) / max(len(counts), 1),
            "temperature": self.temperature, "judge_model": self.judge_model_name,
            "reward_model": self.reward_model_name,
        }
        if judge is not None:
            j_mean, j_lo, j_hi = bootstrap_ci(judge, samples=BOOTSTRAP_SAMPLES, seed=step)
            record.update(judge_score_mean=j_mean, judge_score_ci=[j_lo, j_hi])
        record.update(responses=texts, cut_rate=sum(1 for g in gens if not g.finished) / max(len(gens), 1),
                      rm_scores=[round(float(x), 4) for x in rm],
                      judge_scores=None if judge is None else [round(float(x), 4) for x in judge])
        if step == 0:
            self.baseline = {"rm": record["rm_scores"], "judge": record["judge_scores"]}
        elif self.baseline is None:  # a resumed run: the step-0 probe is in the log
            first = next((r for r in read_overopt(self.log_path.parent) if r.get("step") == 0), None)
            if first and first.get("rm_scores"):
                self.baseline = {"rm": first["rm_scores"], "judge": first.get("judge_scores")}
        for key, scores in (("rm", record["rm_scores"]), ("judge", record["judge_scores"])):
            change, mde = (None, None) if step == 0 or scores is None or self.baseline is None else \
                paired_change(scores, self.baseline.get(key), seed=step)
            record[f"{key}_change_vs_step0"], record[f"{key}_mde"] = change, mde
        record["seconds"] = time.perf_counter() - start
        append_jsonl(self.log_path, record)
        judge_text = (f", judge {record['judge_score_mean']:.3f}" if judge is not None else "")
        if record["rm_change_vs_step0"]:
            judge_text += (f"; change vs step 0: RM {record['rm_change_vs_step0'][0]:+.3f} (MDE "
                           f"{record['rm_mde']:.3f})" + (f", judge {record['judge_change_vs_step0'][0]:+.3f} (MDE "
                                                         f"{record['judge_mde']:.3f})"
                                                         if record["judge_change_vs_step0"] else ""))
        print(f"probe at step {step}: exact KL {kl:.4f} nats/token [{kl_lo:.4f}, {kl_hi:.4f}], reward model "
              f"{rm_mean:.3f}{judge_text} on {len(self.prompts)} held-out prompts ({record['seconds']:.1f} s)",
              flush=True)
        return record


def holder(model, eval_mode: bool = True):
    """A context manager factory yielding `model` in eval mode (training mode restored after)."""
    return lambda: evaluating(model, eval_mode)


def adapters_disabled(model):
    """The reference of a LoRA policy: the same model with its adapters disabled (eval mode, restored after)."""
    @contextlib.contextmanager
    def use():
        with evaluating(model), model.disable_adapter():
            yield model

    return use
