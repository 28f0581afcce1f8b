"""Reward-model training on equal work — plain transformers Trainer against rlhflab's train_reward_model — and one row
per "less work" choice (frozen lower blocks, the cached frozen prefix) with its test accuracy on the same pairs.

`python bench/bench_reward.py [--pairs 64] [--epochs 1]` (`--tiny`: a 2-block model, checks every path in seconds).

Equal work: both train the same pairs of the embedded demo data (same token ids, batch, AdamW, learning rate), the same
lower blocks frozen, under the same bf16 setting (the Trainer's bf16 flag: torch autocast where the CPU runs bf16 fast);
ours with the cached frozen prefix turned off, so both run every block at every step. Times are per optimizer step
(the Trainer's on_step_begin to on_step_end: forward, backward, optimizer), the first step warm-up; "train" time is all
steps plus, where the prefix is cached, its one pass over the training pairs. Test accuracy: the demo's 64 shared test
pairs (the same for every variant), ties counted wrong, 95 % Wilson interval.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

from common import command, machine, spread, tiny_models

TINY = dict(freeze_layers=1, max_length=64, test_size=16)


def _step_timer(seconds: list[float]):
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            seconds.append(time.perf_counter() - self.t0)

    return StepTimes()


def _summary(step_s: list[float], prefix_s: float, pairs: int, epochs: int) -> dict:
    train_s = prefix_s + sum(step_s)
    return {"steps": {**spread(step_s[1:] or step_s), "warm_up_s": step_s[0]}, "prefix_s": prefix_s,
            "train_s": train_s, "pairs_per_s": pairs * epochs / train_s}


@contextlib.contextmanager
def _without_prefix_cache():
    from rlhflab.training.reward import FrozenPrefix

    original = FrozenPrefix.__dict__["applies"]
    FrozenPrefix.applies = staticmethod(lambda model, n: False)
    try:
        yield
    finally:
        FrozenPrefix.applies = original


def ours(pairs: int, epochs: int, cached: bool = True, **cfg_kw) -> dict:
    """train_reward_model (demo profile + overrides) with a step timer added to its Trainer."""
    import rlhflab.training.reward as rt
    from rlhflab.config import RewardConfig, build_config

    step_s, prefix_s = [], []
    make_trainer, cached_init = rt._trainer_class, rt.CachedPairDataset.__init__

    def trainer_class():
        cls = make_trainer()

        class Timed(cls):
            def __init__(self, *args, callbacks=None, **kwargs):
                super().__init__(*args, callbacks=[*(callbacks or []), _step_timer(step_s)], **kwargs)

        return Timed

    def timed_cache(self, *args, **kwargs):
        t0 = time.perf_counter()
        cached_init(self, *args, **kwargs)
        prefix_s.append(time.perf_counter() - t0)  # train pairs first, then dev pairs

    rt._trainer_class, rt.CachedPairDataset.__init__ = trainer_class, timed_cache
    try:
        with tempfile.TemporaryDirectory() as tmp, (contextlib.nullcontext() if cached else _without_prefix_cache()):
            cfg = build_config(RewardConfig, "demo", train_size=pairs, epochs=epochs,
                               output_dir=str(Path(tmp) / "rm"), **cfg_kw)
            t0 = time.perf_counter()
            out = rt.train_reward_model(cfg)
            whole_s = time.perf_counter() - t0
            ev = json.loads((out / rt.EVAL_FILE).read_text())
    finally:
        rt._trainer_class, rt.CachedPairDataset.__init__ = make_trainer, cached_init
    return {**_summary(step_s, prefix_s[0] if prefix_s else 0.0, ev["train_pairs"], epochs), "whole_call_s": whole_s,
            "test_accuracy": ev["accuracy"], "test_pairs": ev["n_pairs"], "train_pairs": ev["train_pairs"],
            "freeze_layers": cfg.freeze_layers, "prefix_cached": bool(prefix_s)}


def plain_trainer(pairs: int, epochs: int, **cfg_kw) -> dict:
    """transformers' Trainer with the pairwise ranking loss, nothing else: the same pairs, token ids, frozen blocks,
    batch, optimizer, learning rate and bf16 setting as train_reward_model; no evaluation or saving while training."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from rlhflab.config import RewardConfig, build_config
    from rlhflab.measure.scoring import encode_for_reward, left_pad
    from rlhflab.models.loading import freeze_lower_layers, load_tokenizer, model_path
    from rlhflab.models.precision import autocast, autocast_dtype
    from rlhflab.training.reward import evaluate_reward_model, split_for

    cfg = build_config(RewardConfig, "demo", train_size=pairs, epochs=epochs, output_dir="unused", **cfg_kw)
    split = split_for(cfg)
    train_pairs = split.role_parts(cfg.role)[0].pairs
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(cfg.base_model)
    model = AutoModelForSequenceClassification.from_pretrained(model_path(cfg.base_model), num_labels=1,
                                                               dtype=torch.float32, use_safetensors=True)
    model.config.pad_token_id = tok.pad_token_id
    if cfg.freeze_layers:
        freeze_lower_layers(model, cfg.freeze_layers)
    rows = [{"chosen": encode_for_reward(tok, p.messages, p.chosen, cfg.max_length),
             "rejected": encode_for_reward(tok, p.messages, p.rejected, cfg.max_length)} for p in train_pairs]

    def collate(batch):
        ids, mask = left_pad([r["chosen"] for r in batch] + [r["rejected"] for r in batch], tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask}

    class PairwiseTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rewards = model(**inputs).logits.squeeze(-1).float()
            half = rewards.shape[0] // 2
            return F.relu(cfg.margin - (rewards[:half] - rewards[half:])).mean()

    step_s = []
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.batch_size, num_train_epochs=epochs, learning_rate=cfg.lr,
            optim="adamw_torch", weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0, eval_strategy="no",
            save_strategy="no", logging_steps=5, report_to="none", seed=cfg.seed, data_seed=cfg.seed,
            remove_unused_columns=False, bf16=autocast_dtype(cfg.bf16) is not None,
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True)
        trainer = PairwiseTrainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                                  callbacks=[_step_timer(step_s)])
        trainer.train()
    model = trainer.model.float().eval()
    with autocast(cfg.bf16):
        ev = evaluate_reward_model(model, tok, split.test.pairs, cfg.max_length, cfg.batch_size * 2)
    return {**_summary(step_s, 0.0, len(train_pairs), epochs), "test_accuracy": ev["accuracy"],
            "test_pairs": ev["n_pairs"], "train_pairs": len(train_pairs), "freeze_layers": cfg.freeze_layers}


def _acc(r: dict) -> str:
    p, lo, hi = r["test_accuracy"]
    return f"{100 * p:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def run(pairs: int = 64, epochs: int = 1, overrides: dict | None = None) -> dict:
    from rlhflab.config import RewardConfig, profile_defaults
    from rlhflab.models.precision import autocast_dtype

    kw = {"dev_size": 8, **(overrides or {})}
    demo = {**profile_defaults(RewardConfig, "demo"), **kw}
    frozen = demo["freeze_layers"]
    precision = "bf16 autocast" if autocast_dtype(demo["bf16"]) is not None else "fp32"
    # The first Trainer run in a process pays one-off costs for several steps (seen on tiny models: 10x slower steps),
    # which would land on whichever side runs first: one short run, discarded, pays them.
    plain_trainer(16, 1, **kw)
    plain = plain_trainer(pairs, epochs, **kw)
    no_cache = ours(pairs, epochs, cached=False, **kw)
    cached = ours(pairs, epochs, cached=True, **kw)
    all_blocks = ours(pairs, epochs, cached=False, **{**kw, "freeze_layers": 0})
    work = (f"{no_cache['train_pairs']} pairs x {epochs} epoch(s), batch {demo['batch_size']}, max {demo['max_length']} "
            f"tokens, {precision}, blocks 1-{frozen} frozen, AdamW lr {demo['lr']:g}")
    less = [
        {"name": "prefix_cache", "factor": f"frozen blocks 1-{frozen} run once per sequence (FrozenPrefix) vs at every "
                                           f"step", "without_label": f"blocks 1-{frozen} recomputed at every step",
         "with_label": "cached frozen prefix (demo)", "without": no_cache, "with": cached,
         "speedup": cached["pairs_per_s"] / no_cache["pairs_per_s"],
         "effect": f"same computation up to bf16 rounding of the cached states: test accuracy {_acc(cached)} cached vs "
                   f"{_acc(no_cache)} recomputed ({cached['test_pairs']} pairs)"},
        {"name": "frozen_blocks", "factor": f"lower {frozen} blocks and embeddings frozen vs every block trains",
         "without_label": "every block trains", "with_label": f"blocks 1-{frozen} frozen (no cache)",
         "without": all_blocks, "with": no_cache, "speedup": all_blocks["steps"]["median"] / no_cache["steps"]["median"],
         "effect": f"test accuracy {_acc(no_cache)} frozen vs {_acc(all_blocks)} all trainable "
                   f"({no_cache['test_pairs']} pairs)"},
    ]
    result = {
        "benchmark": f"reward-model training, equal work ({work})", "pairs": pairs, "epochs": epochs,
        "precision": precision,
        "equal_work": {"work": work, "baseline": "plain transformers Trainer + pairwise ranking loss",
                       "baseline_run": plain,
                       "ours": "rlhflab train_reward_model, frozen-prefix cache off (adds: an evaluation and a save "
                               "per epoch, outside the timed steps)",
                       "ours_run": no_cache, "speedup": plain["steps"]["median"] / no_cache["steps"]["median"]},
        "less_work": less, "machine": machine(), "command": command()}
    for row in less:
        print(f"{row['name']}: {row['speedup']:.2f}x; {row['effect']}", flush=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64, help="training pairs (batch 8: pairs / 8 optimizer steps)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a 2-block model: checks every path, measures nothing")
    a = parser.parse_args()
    if a.pairs < 16:
        parser.error("--pairs must be at least 16: two optimizer steps of 8, the first of them warm-up")
    if a.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            run(a.pairs, a.epochs, overrides={**TINY, "base_model": tiny_models(Path(tmp))["base_model"]})
    else:
        run(a.pairs, a.epochs)
