"""Supervised fine-tuning (SFT) of a policy on the chosen responses of preference pairs, with TRL's SFTTrainer.

Each example is a prompt (the transcript before the last assistant turn) and its chosen response; the loss is
on the response tokens only. Resume, per-step metrics and the checkpoint folder come from rlhflab.training.policy."""
from __future__ import annotations

from pathlib import Path

import torch

from rlhflab.config import SFTConfig
from rlhflab.data.hh_rlhf import PreferencePair, policy_training_pairs
from rlhflab.models.loading import count_parameters
from rlhflab.models.prompts import format_prompt, format_response, with_system
from rlhflab.store.cards import Timer, how_it_was_made, markdown_table
from rlhflab.store.checkpoints import METRICS_FILE
from rlhflab.store.jsonio import read_jsonl
from rlhflab.training.policy import (
    adapter_sentence,
    common_trainer_args,
    hyperparameter_table,
    load_start_policy,
    lora_config,
    policy_output_dir,
    preference_data_line,
    prepare_resume,
    removed_on_failure,
    require_examples,
    run_trainer,
    save_policy_checkpoint,
    window_means,
)


def sft_examples(pairs: list[PreferencePair], tokenizer, system: str | None = None) -> list[dict]:
    """TRL prompt/completion examples: chat messages when the tokenizer has a chat template (TRL renders
    them), else the plain 'Human:/Assistant:' text the policy is prompted with (rlhflab.models.prompts.format_prompt)."""
    if getattr(tokenizer, "chat_template", None):
        return [{"prompt": with_system(p.messages, system),
                 "completion": [{"role": "assistant", "content": p.chosen}]} for p in pairs]
    return [{"prompt": format_prompt(tokenizer, with_system(p.messages, system)),
             "completion": format_response(tokenizer, p.chosen)} for p in pairs]


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
    dataset = datasets.Dataset.from_list(sft_examples(pairs, tokenizer, cfg.system_prompt))
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
        "How it was made": how_it_was_made(timer.elapsed_s, cfg.bf16),
        "Use": ("```python\nfrom rlhflab.models.loading import load_policy\nmodel, tok = load_policy('PATH_OR_REPO')\n```\n"
                "Start DPO, PPO or GRPO from it with `--init-from sft`."),
    }
    return save_policy_checkpoint(out, policy, trainer.processing_class, cfg, method="sft", start=start, info=info,
                                  title=f"SFT policy ({cfg.mode})", sections=sections, metrics_path=log_path,
                                  work_dir=log_path.parent)
