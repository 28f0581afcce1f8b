"""The skeleton every policy trainer (SFT, DPO, PPO, GRPO/RLOO) follows, and what they share.

Each `train_<method>` reads as the same phases: the start policy (--init-from, else --base-model) and its data;
resume (the work folder beside the checkpoint); the TRL trainer, built with the lab's subclass; the run, one
metrics.jsonl record per step; the checkpoint folder with its card, saved atomically; the push to the Hub.

A policy checkpoint says what it is in its model card's front matter, under the key `rlhflab`
(method, mode, base model, what it started from), and in `policy_info.json` beside it. The app
discovers policies by reading that, never by a hard-coded folder name."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from rlhflab.config import CHECKPOINTS_DIR
from rlhflab.errors import UserError
from rlhflab.models.precision import runs_bf16
from rlhflab.store.cards import (
    CARD_KEY,
    POLICY_INFO_FILE,
    POLICY_METHODS,
    markdown_table,
    policy_metadata,
    write_model_card,
)
from rlhflab.store.checkpoints import METRICS_FILE, save_atomically
from rlhflab.store.hub import report_push
from rlhflab.store.jsonio import append_jsonl, read_jsonl, write_json

STORE_ALIASES = ("sft", "sft-lora")  # --init-from names that mean a folder of the local store


def policy_output_dir(method: str, mode: str, output_dir: str | None = None) -> Path:
    """The run's checkpoint folder: --output-dir, else checkpoints/<method> (full) or <method>-lora; PPO keeps
    its historical ppo-full / ppo-lora."""
    if output_dir:
        return Path(output_dir)
    if method == "ppo":
        return CHECKPOINTS_DIR / f"ppo-{mode}"
    return CHECKPOINTS_DIR / (method if mode == "full" else f"{method}-{mode}")


def policy_key(method: str, mode: str) -> str:
    """The app's name for a policy of this method and mode (also its default folder name)."""
    return policy_output_dir(method, mode).name


def resolve_init_from(init_from: str | None) -> str | None:
    """--init-from as a loadable name: 'sft' means the local store's checkpoints/sft."""
    if not init_from:
        return None
    if init_from in STORE_ALIASES:
        folder = CHECKPOINTS_DIR / init_from
        if not folder.is_dir():
            mode = "lora" if init_from.endswith("lora") else "full"
            raise UserError(f"--init-from {init_from}: there is no SFT checkpoint at {folder}; create it with "
                            f"`python training/sft.py --mode {mode}` (add --profile demo on a CPU) or pass a folder "
                            f"or Hub id.")
        return str(folder)
    return init_from


def load_start_policy(base_model: str, init_from: str | None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, start name) of the policy a run begins with: --init-from if given, else --base-model.

    A LoRA start (an SFT adapter) is merged into its base, so the policy and its frozen reference are the
    same plain model at step 0 whichever way the start was trained.
    """
    from rlhflab.models.loading import load_causal_lm, load_policy

    start = resolve_init_from(init_from)
    if start is None:
        model, tokenizer = load_causal_lm(base_model, dtype)
        return model, tokenizer, base_model
    model, tokenizer = load_policy(start, dtype)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model, tokenizer, start


def lora_config(cfg, model):
    """The spec's LoRA adapter (attention q/v, r, alpha, dropout from the config) for `model`."""
    from peft import LoraConfig

    from rlhflab.models.loading import lora_target_modules

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_modules(model), task_type="CAUSAL_LM", bias="none")


def learning_rate(cfg) -> float:
    return cfg.lora_lr if cfg.mode == "lora" and getattr(cfg, "lora_lr", None) else cfg.lr


# ---------------------------------------------------------------- logs and resume
def trainer_metrics_callback(log_path: Path, to_record: Callable[[dict, object], dict | None],
                             on_record: Callable[[dict], None] | None = None):
    """A transformers TrainerCallback that turns each training log (one per step with logging_steps=1) into a
    metrics.jsonl record: `to_record(logs, state)` maps TRL's keys to the lab's (units in the names), and the
    callback adds step, lr and seconds_per_step. Only the main process writes."""
    from transformers import TrainerCallback

    class MetricsLog(TrainerCallback):
        last_time = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "train_runtime" in logs or not any(k in logs for k in ("loss", "learning_rate")):
                return
            if any(k.startswith("eval_") for k in logs):
                return
            from rlhflab.models.hardware import follow_thread_share

            follow_thread_share()
            now = time.perf_counter()
            seconds, self.last_time = now - self.last_time, now
            record = to_record(logs, state)
            if record is None:
                return
            record = {"step": state.global_step, **record, "lr": float(logs.get("learning_rate", float("nan"))),
                      "seconds_per_step": seconds}
            if state.is_world_process_zero:
                append_jsonl(log_path, record)
                if on_record is not None:
                    on_record(record)

    return MetricsLog()


def last_complete_checkpoint(work: Path) -> Path | None:
    """The newest Trainer checkpoint in `work` that finished saving (trainer_state.json is written last, so a
    process killed mid-save leaves a newer, partial checkpoint-N that the Trainer's own "latest" would pick)."""
    complete = sorted((p for p in Path(work).glob("checkpoint-*")
                       if p.name.rsplit("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()),
                      key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return complete[-1] if complete else None


def prepare_resume(work: Path, log_path: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start fresh, and the work folder is emptied). The metrics log keeps
    only the steps up to that checkpoint, since the steps after it run again."""
    last = last_complete_checkpoint(work) if resume else None
    if resume:
        print(f"--resume: continuing from {last}" if last else
              f"--resume: no saved training state in {work}; starting from scratch.", flush=True)
    if last is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        return None
    step = int(last.name.rsplit("-", 1)[1])
    if os.environ.get("RANK", "0") == "0":
        kept = [r for r in read_jsonl(log_path) if r.get("step", 0) <= step]
        log_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return last


# ---------------------------------------------------------------- the checkpoint
def save_policy_checkpoint(out: Path, model, tokenizer, cfg, *, method: str, start: str, info: dict, title: str,
                           sections: dict[str, str], metrics_path: Path | None = None,
                           extra: Callable[[Path], None] | None = None, datasets: list[str] | None = None,
                           work_dir: Path | None = None) -> Path:
    """Write a policy checkpoint atomically in Hub layout: weights (the whole model, or only the LoRA adapter
    with its base named as the user named it), tokenizer, metrics.jsonl, policy_info.json, training_config.json
    and a model card whose front matter says method, mode, base and start. Then push when asked."""
    meta = policy_metadata(method, cfg.mode, cfg.base_model, getattr(cfg, "init_from", None))
    meta["init_from"] = start

    def write(folder: Path):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        adapter_cfg_path = folder / "adapter_config.json"
        if adapter_cfg_path.is_file():  # name the start as the user did (not a local cache path): it loads anywhere
            adapter_cfg = json.loads(adapter_cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = start
            adapter_cfg_path.write_text(json.dumps(adapter_cfg, indent=2))
        if metrics_path is not None and Path(metrics_path).is_file():
            (folder / METRICS_FILE).write_bytes(Path(metrics_path).read_bytes())
        write_json(folder / POLICY_INFO_FILE, {**meta, **info})
        write_json(folder / "training_config.json", asdict(cfg))
        if extra is not None:
            extra(folder)
        library = "peft" if cfg.mode == "lora" else "transformers"
        metadata = {"library_name": library, "base_model": start, "pipeline_tag": "text-generation",
                    "tags": ["rlhf", method, "trl", "rlhflab"] + (["lora"] if cfg.mode == "lora" else []),
                    "datasets": datasets or [getattr(cfg, "dataset", "")], CARD_KEY: meta}
        write_model_card(folder, metadata, title, sections)

    save_atomically(out, write)
    if work_dir is not None:  # the checkpoint holds everything now; each resumable Trainer state is GBs of disk
        for state in Path(work_dir).glob("checkpoint-*"):
            shutil.rmtree(state, ignore_errors=True)
    print(f"{POLICY_METHODS[method][0]} ({cfg.mode}) checkpoint saved to {out}", flush=True)
    report_push(out, cfg.push_to_hub)
    return out


def is_stand_in(cfg) -> bool:
    """True when the run trained on the embedded stand-in data (the card and the app say so)."""
    return cfg.profile == "demo" or "data/demo" in str(getattr(cfg, "dataset", ""))


# ---------------------------------------------------------------- the Trainer-based trainers (SFT, DPO)
# Trainer checkpoints (weights + optimizer) per run: each full-model save holds 12 bytes per parameter (fp32
# weights and AdamW's two moments), so a few per run bound both the disk time and the work lost to an interruption.
SAVES_PER_RUN = 4


def trainer_precision(want_bf16: bool) -> dict:
    """TrainingArguments precision flags: the Trainer's own bf16 (an autocast entered per forward pass) where
    rlhflab.models.precision.runs_bf16 allows it. Not an autocast around the whole run: autocast caches the bf16
    copy of each trainable weight until the outermost context exits, so forwards would keep seeing the first step's
    weights."""
    return {"bf16": runs_bf16(want_bf16), "fp16": False, "use_cpu": not torch.cuda.is_available()}


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


def run_trainer(trainer, log_path: Path, to_record, resume_from: Path | None, describe) -> None:
    """Train (from `resume_from` when given), one metrics.jsonl record and one printed line per step."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every raw log dict; the line below says what matters

    def print_step(r):
        print(f"step {r['step']}/{trainer.state.max_steps}: {describe(r)}, {r['seconds_per_step']:.1f} s",
              flush=True)

    trainer.add_callback(trainer_metrics_callback(log_path, to_record, print_step))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
