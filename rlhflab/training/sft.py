"""Supervised fine-tuning (SFT) of a policy on the chosen responses of preference pairs, with TRL's SFTTrainer.

Each example is a prompt (the transcript before the last assistant turn) and its chosen response; the loss is
on the response tokens only. Resume, per-step metrics and the checkpoint folder come from policy_training."""
from __future__ import annotations

import contextlib
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from rlhflab.config import SFTConfig
from rlhflab.data.hh_rlhf import PreferencePair, policy_training_pairs
from rlhflab.errors import UserError
from rlhflab.models.hardware import best_device, hardware_description
from rlhflab.models.loading import count_parameters
from rlhflab.models.precision import autocast_dtype
from rlhflab.models.prompts import format_prompt, format_response
from rlhflab.store.cards import Timer, command_line, markdown_table
from rlhflab.store.checkpoints import METRICS_FILE
from rlhflab.store.jsonio import read_jsonl
from rlhflab.training.policy import (
    is_stand_in,
    learning_rate,
    load_start_policy,
    lora_config,
    policy_output_dir,
    prepare_resume,
    save_policy_checkpoint,
    trainer_metrics_callback,
)

# Trainer checkpoints (weights + optimizer) per run: each full-model save of the 135M embedded model writes
# 135M x 12 bytes (fp32 weights and AdamW's two moments) = 1.6 GB, so a few per run bound both the disk time and the work lost to an interruption.
SAVES_PER_RUN = 4


def sft_examples(pairs: list[PreferencePair], tokenizer) -> list[dict]:
    """TRL prompt/completion examples: chat messages when the tokenizer has a chat template (TRL renders
    them), else the plain 'Human:/Assistant:' text the policy is prompted with (rlhflab.models.prompts.format_prompt)."""
    if getattr(tokenizer, "chat_template", None):
        return [{"prompt": p.messages, "completion": [{"role": "assistant", "content": p.chosen}]} for p in pairs]
    return [{"prompt": format_prompt(tokenizer, p.messages), "completion": format_response(tokenizer, p.chosen)}
            for p in pairs]


def trainer_precision(want_bf16: bool) -> dict:
    """TrainingArguments precision flags: the Trainer's own bf16 (an autocast entered per forward pass) where
    rlhflab.models.precision.autocast_dtype allows it. Not an autocast around the whole run: autocast caches the bf16 copy
    of each trainable weight until the outermost context exits, so forwards would keep seeing the first step's
    weights."""
    bf16 = autocast_dtype(want_bf16, best_device()) is not None
    return {"bf16": bf16, "fp16": False, "use_cpu": not torch.cuda.is_available()}


def common_trainer_args(cfg, work: Path) -> dict:
    """The TRL config arguments SFT and DPO share: batch, schedule, checkpoints for --resume, logging."""
    return dict(
        output_dir=str(work), per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1, learning_rate=learning_rate(cfg),
        max_length=cfg.max_length, seed=cfg.seed, data_seed=cfg.seed,
        # a float below 1 is a fraction of the run's steps (the Trainer rounds it up)
        save_strategy="steps", save_steps=1.0 / SAVES_PER_RUN, save_total_limit=1, save_only_model=False,
        logging_steps=1, report_to=cfg.report_to, disable_tqdm=True, dataloader_num_workers=0,
        # small models on a CPU: recomputing activations costs time, and memory is not the limit
        activation_checkpointing=False, **trainer_precision(cfg.bf16),
    )


@contextlib.contextmanager
def removed_on_failure(folder: Path):
    """Remove `folder` when the block fails and the folder was not there before it: the Trainer makes its output
    folder as it is built, before the run knows it has anything to train on."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def require_examples(trainer, n_given: int, cfg) -> None:
    if len(trainer.train_dataset) == 0:
        raise UserError(f"all {n_given} examples have a prompt of --max-length {cfg.max_length} tokens or more, so "
                        f"no response token is left to train on; raise --max-length.")


def window_means(records: list[dict], keys: list[str]) -> tuple[list[str], dict, dict]:
    """(column names, first, last): means of `keys` over the first and the last pass over the data when the run
    made two or more (the same examples in both, so the difference is learning, not which batches were drawn),
    else over its first and last quarter of steps."""
    passes = [max(1, math.ceil(round(r.get("epoch", 0.0), 6))) for r in records]
    if passes and passes[-1] >= 2:
        first = [r for r, p in zip(records, passes) if p == 1]
        last = [r for r, p in zip(records, passes) if p == passes[-1]]
        columns = [f"first pass ({len(first)} steps)", f"last pass ({len(last)} steps)"]
    else:
        k = max(1, len(records) // 4)
        first, last = records[:k], records[-k:]
        columns = [f"first {k} steps", f"last {k} steps"]

    def mean(rows, key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    return columns, {key: mean(first, key) for key in keys}, {key: mean(last, key) for key in keys}


def preference_data_line(cfg, n_pairs: int, skipped: dict, what: str) -> str:
    """The card's data sentence, naming the embedded stand-in data as such."""
    source = (f"`{cfg.dataset}` — **embedded stand-in data written for this project in hh-rlhf format, not "
              f"Anthropic/hh-rlhf**" if is_stand_in(cfg) else f"`{cfg.dataset}`")
    dropped = f" ({sum(skipped.values())} rows skipped: {skipped})" if skipped else ""
    return f"Data: {source}; {n_pairs} {what}{dropped}."


def hyperparameter_table(cfg) -> str:
    return markdown_table(["hyperparameter", "value"], [[k, v] for k, v in asdict(cfg).items() if k != "push_to_hub"])


def adapter_sentence(cfg, start: str, peft_config) -> str:
    if cfg.mode != "lora":
        return "All parameters trained."
    return (f"LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout} on "
            f"{sorted(peft_config.target_modules)}; this folder holds only the adapter — it loads onto `{start}`.")


def _to_record(logs: dict, state) -> dict:
    return {"epoch": float(logs.get("epoch", state.epoch or 0.0)),
            "loss": float(logs["loss"]),  # mean over the step's response tokens, nats/token
            "mean_token_accuracy": float(logs.get("mean_token_accuracy", float("nan"))),
            "entropy_per_token": float(logs.get("entropy", float("nan"))),
            "tokens_seen": int(logs.get("num_tokens", 0))}


def build_sft_trainer(cfg: SFTConfig, pairs: list[PreferencePair], work: Path, callbacks: list | None = None):
    """(TRL SFTTrainer, start name): the start policy (with a fresh LoRA adapter in LoRA mode) and the
    tokenized examples, whose labels are -100 on every prompt token (TRL's completion_only_loss)."""
    import datasets
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    model, tokenizer, start = load_start_policy(cfg.base_model, None)
    dataset = datasets.Dataset.from_list(sft_examples(pairs, tokenizer))
    peft_config = lora_config(cfg, model) if cfg.mode == "lora" else None
    args = TRLSFTConfig(completion_only_loss=True, **common_trainer_args(cfg, work))
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=callbacks)
    require_examples(trainer, len(dataset), cfg)
    return trainer, start


def train_sft(cfg: SFTConfig, callbacks: list | None = None) -> Path:
    """Fine-tune the start policy on the chosen responses; write the checkpoint folder; return its path.

    `callbacks`: extra transformers TrainerCallbacks (the tests interrupt a run with one).
    """
    timer = Timer()
    torch.manual_seed(cfg.seed)
    # the policy side only: the judge trains on the other side and must not have seen a policy's data
    train_set = policy_training_pairs(cfg.dataset, cfg.train_size, cfg.seed, cfg.judge_share)  # bad data stops here
    print(f"SFT examples: {len(train_set.pairs)} chosen responses; skipped rows: {train_set.num_skipped} "
          f"({dict(train_set.skipped)})", flush=True)
    out = policy_output_dir("sft", cfg.mode, cfg.output_dir)
    work = out.parent / f".{out.name}-work"
    log_path = work / METRICS_FILE
    with removed_on_failure(work):
        trainer, start = build_sft_trainer(cfg, train_set.pairs, work, callbacks)
    resume_from = prepare_resume(work, log_path, cfg.resume)
    run_trainer(trainer, log_path, _to_record, resume_from, lambda r: (
        f"loss {r['loss']:.4f} nats/token, token accuracy {r['mean_token_accuracy']:.3f}"))
    if not trainer.is_world_process_zero():
        return out
    return _save(cfg, trainer, start, train_set, log_path, out, timer)


def run_trainer(trainer, log_path: Path, to_record, resume_from: Path | None, describe) -> None:
    """Train (from `resume_from` when given), one metrics.jsonl record and one printed line per step."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every raw log dict; the line below says what matters

    def print_step(r):
        print(f"step {r['step']}/{trainer.state.max_steps}: {describe(r)}, {r['seconds_per_step']:.1f} s",
              flush=True)

    trainer.add_callback(trainer_metrics_callback(log_path, to_record, print_step))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)


def _save(cfg: SFTConfig, trainer, start: str, train_set, log_path: Path, out: Path, timer: Timer) -> Path:
    """The checkpoint folder with its card."""
    policy, args = trainer.model, trainer.args
    trainable, total = count_parameters(policy)
    records = read_jsonl(log_path)
    columns, first, last = window_means(records, ["loss", "mean_token_accuracy", "entropy_per_token"])
    info = {"steps": trainer.state.global_step, "examples": len(trainer.train_dataset),
            "trainable_params": trainable, "total_params": total, "bf16": args.bf16, "seconds": timer.elapsed_s,
            "summary": {"windows": columns, "first": first, "last": last}}
    result = markdown_table(["metric", *columns], [
        ["loss on response tokens (nats/token)", f"{first['loss']:.4f}", f"{last['loss']:.4f}"],
        ["next-token accuracy on response tokens", f"{first['mean_token_accuracy']:.3f}",
         f"{last['mean_token_accuracy']:.3f}"],
        ["entropy (nats/token)", f"{first['entropy_per_token']:.3f}", f"{last['entropy_per_token']:.3f}"]])
    peft_config = getattr(policy, "peft_config", {}).get("default")
    sections = {
        "What this is": (f"A policy ({cfg.mode}) made by supervised fine-tuning of `{start}` on the chosen "
                         f"responses of preference pairs with TRL's SFTTrainer. The loss is on the response tokens "
                         f"only: the prompt (the conversation before the response) carries none. "
                         f"{adapter_sentence(cfg, start, peft_config)}\n\n"
                         + preference_data_line(cfg, len(trainer.train_dataset), dict(train_set.skipped),
                                                "prompt/response examples (the chosen side of each pair)")),
        "Parameters": f"trainable {trainable:,} of {total:,}",
        "Training result": (f"{info['steps']} optimizer steps of {cfg.batch_size} examples:\n\n{result}\n\n"
                            f"Per-step metrics: `{METRICS_FILE}`."),
        "Hyperparameters": hyperparameter_table(cfg),
        "How it was made": (f"`{command_line()}` in {timer.elapsed_s:.0f} s on {hardware_description()}; "
                            f"bf16 autocast: {args.bf16}."),
        "Use": ("```python\nfrom rlhflab.models.loading import load_policy\nmodel, tok = load_policy('PATH_OR_REPO')\n```\n"
                "Start DPO, PPO or GRPO from it with `--init-from sft`."),
    }
    return save_policy_checkpoint(out, policy, trainer.processing_class, cfg, method="sft", start=start, info=info,
                                  title=f"SFT policy ({cfg.mode})", sections=sections, metrics_path=log_path,
                                  work_dir=log_path.parent)
