"""What every policy trainer shares (SFT, PPO, DPO, GRPO/RLOO): where a run starts, where it saves, how its
checkpoint names its method, how TRL's per-step logs become the lab's `metrics.jsonl`, and how it resumes.

A policy checkpoint says what it is in its model card's front matter, under the key `rlhflab`
(method, mode, base model, what it started from), and in `policy_info.json` beside it. The app
discovers policies by reading that, never by a hard-coded folder name."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from rlhflab.config import CHECKPOINTS_DIR
from rlhflab.errors import UserError
from rlhflab.store.cards import CARD_KEY, POLICY_INFO_FILE, POLICY_METHODS, policy_metadata, write_model_card
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


# ---------------------------------------------------------------- what a checkpoint says it is



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
    import shutil

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
        import shutil

        for state in Path(work_dir).glob("checkpoint-*"):
            shutil.rmtree(state, ignore_errors=True)
    print(f"{POLICY_METHODS[method][0]} ({cfg.mode}) checkpoint saved to {out}", flush=True)
    report_push(out, cfg.push_to_hub)
    return out


def is_stand_in(cfg) -> bool:
    """True when the run trained on the embedded stand-in data (the card and the app say so)."""
    return cfg.profile == "demo" or "data/demo" in str(getattr(cfg, "dataset", ""))
