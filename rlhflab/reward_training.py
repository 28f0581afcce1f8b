"""Reward-model training on preference pairs with transformers' Trainer, and the reward model's evaluation."""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rlhflab import stats
from rlhflab.checkpoints import (Timer, command_line, hardware_description, markdown_table, report_push, save_atomically,
                                 write_json, write_model_card)
from rlhflab.config import RewardConfig, RewardEvalConfig, profile_defaults
from rlhflab.data.hh_rlhf import PreferencePair, train_val_pairs
from rlhflab.models import (autocast, autocast_dtype, best_device, count_parameters, freeze_lower_layers,
                            load_reward_model, load_tokenizer, model_path)
from rlhflab.scoring import encode_for_reward, left_pad, reward_forward, score_responses

EVAL_FILE = "reward_eval.json"


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, kind: str = "ranking",
                  margin: float = 1.0) -> torch.Tensor:
    """Mean pairwise loss: ranking max(0, margin - (r_c - r_r)) or Bradley-Terry -log sigmoid(r_c - r_r)."""
    diff = r_chosen - r_rejected
    if kind == "ranking":
        return F.relu(margin - diff).mean()
    if kind == "bradley-terry":
        return -F.logsigmoid(diff).mean()
    raise ValueError(f"unknown loss {kind!r}; use ranking or bradley-terry")


class PairDataset(Dataset):
    def __init__(self, pairs: list[PreferencePair], tokenizer, max_length: int):
        self.items = [{"chosen_ids": encode_for_reward(tokenizer, p.messages, p.chosen, max_length),
                       "rejected_ids": encode_for_reward(tokenizer, p.messages, p.rejected, max_length)}
                      for p in pairs]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class PairCollator:
    """Chosen and rejected sequences of a batch stacked into one left-padded batch (one forward pass)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        ids, mask = left_pad([r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask}


class FrozenPrefix:
    """The frozen lower blocks of a reward model, run once per sequence instead of every epoch.

    With the embeddings and the lowest blocks frozen, their output for a sequence never changes while
    training, so it is computed once (no grad) and the Trainer only runs the upper blocks, fed those
    hidden states as `inputs_embeds`. Exact for rotary-position (Llama-style) models, where a block
    stack fed hidden states computes what it computes inside the full model; other architectures
    (GPT-2 adds position embeddings to `inputs_embeds`) keep the plain path.
    """

    def __init__(self, model, n: int):
        self.backbone = getattr(model, model.base_model_prefix)
        self.blocks = self.backbone.layers
        self.n = min(n, len(self.blocks))

    @staticmethod
    def applies(model, n: int) -> bool:
        backbone = getattr(model, model.base_model_prefix, None)
        return n > 0 and hasattr(backbone, "rotary_emb") and isinstance(getattr(backbone, "layers", None),
                                                                          torch.nn.ModuleList)

    @torch.no_grad()
    def hidden_states(self, sequences: list[list[int]], pad_id: int, batch_size: int = 32) -> list[torch.Tensor]:
        """Output of the frozen blocks for each sequence (its own length, no padding), on the model's device."""
        device = next(self.backbone.parameters()).device
        norm, self.backbone.norm = self.backbone.norm, torch.nn.Identity()
        self.backbone.layers = torch.nn.ModuleList(list(self.blocks)[: self.n])
        out: list[torch.Tensor | None] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths pad little
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                ids, mask = left_pad([sequences[i] for i in idx], pad_id)
                h = self.backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                h = h.float().cpu()  # kept in host memory; the Trainer moves each batch to the device
                for row, i in enumerate(idx):
                    out[i] = h[row, ids.shape[1] - len(sequences[i]):].clone()
        finally:
            self.backbone.norm, self.backbone.layers = norm, self.blocks
        return out

    def train_upper_blocks(self):
        """From here on the model holds only the upper blocks (what the Trainer trains and saves)."""
        self.backbone.layers = torch.nn.ModuleList(list(self.blocks)[self.n:])

    def restore(self):
        self.backbone.layers = self.blocks


class CachedPairDataset(Dataset):
    """Pairs as the frozen blocks' hidden states (see FrozenPrefix)."""

    def __init__(self, pairs: PairDataset, prefix: FrozenPrefix, pad_id: int):
        seqs = [item[key] for item in pairs.items for key in ("chosen_ids", "rejected_ids")]
        states = prefix.hidden_states(seqs, pad_id)
        self.items = [{"chosen_h": states[2 * i], "rejected_h": states[2 * i + 1]} for i in range(len(pairs))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _collate_cached(rows):
    """Chosen and rejected hidden states, left-padded with zeros into one batch (masked out)."""
    states = [r["chosen_h"] for r in rows] + [r["rejected_h"] for r in rows]
    width = max(len(h) for h in states)
    embeds = torch.zeros(len(states), width, states[0].shape[-1], dtype=states[0].dtype)
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for i, h in enumerate(states):
        embeds[i, width - len(h):] = h
        mask[i, width - len(h):] = 1
    return {"inputs_embeds": embeds, "attention_mask": mask}


def _trainer_class():
    from transformers import Trainer

    class PairwiseRewardTrainer(Trainer):
        """Trainer whose loss is the pairwise loss of the config (ranking or Bradley-Terry)."""

        loss_kind = "ranking"
        margin = 1.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "inputs_embeds" in inputs:  # upper blocks on cached hidden states (FrozenPrefix); the head pools the
                # last position, every sequence's last real token under left padding
                rewards = model(inputs_embeds=inputs["inputs_embeds"],
                                attention_mask=inputs["attention_mask"]).logits.squeeze(-1).float()
            else:
                rewards = reward_forward(model, inputs["input_ids"], inputs["attention_mask"])
            half = rewards.shape[0] // 2
            loss = pairwise_loss(rewards[:half], rewards[half:], self.loss_kind, self.margin)
            return (loss, torch.stack([rewards[:half], rewards[half:]], dim=1)) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
            return loss.detach(), rewards.detach(), None

    return PairwiseRewardTrainer


def _accuracy_metrics(eval_pred):
    rewards = np.asarray(eval_pred.predictions)
    return {"accuracy": float((rewards[:, 0] > rewards[:, 1]).mean())}


def build_reward_model(base_model: str, freeze_layers: int = 0):
    """A one-label sequence-classification model on the base backbone (TRL's reward/value model shape)."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(base_model)
    model = AutoModelForSequenceClassification.from_pretrained(model_path(base_model), num_labels=1,
                                                               dtype=torch.float32, use_safetensors=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if freeze_layers:
        freeze_lower_layers(model, freeze_layers)
    return model, tokenizer


def evaluate_reward_model(model, tokenizer, pairs: list[PreferencePair], max_length: int = 512,
                          batch_size: int = 16) -> dict:
    """Held-out accuracy with a Wilson 95 % interval, reward distributions and the length-bias checks."""
    prompts = [p.messages for p in pairs]
    r_c = np.array(score_responses(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size, max_length))
    r_r = np.array(score_responses(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size, max_length))
    len_c = np.array([len(tokenizer(p.chosen, add_special_tokens=False)["input_ids"]) for p in pairs])
    len_r = np.array([len(tokenizer(p.rejected, add_special_tokens=False)["input_ids"]) for p in pairs])
    correct = r_c > r_r  # ties count wrong
    n = len(pairs)
    acc = stats.wilson_interval(int(correct.sum()), n)
    # The baseline picks the longer response; a pair of equal lengths is a coin flip, so it counts half.
    longer = stats.win_rate_with_ties(len_c, len_r, seed=3)
    longer_wins = longer["rate"]
    chosen_longer = len_c > len_r
    split = {}
    for name, mask in (("chosen_longer", chosen_longer), ("chosen_not_longer", ~chosen_longer)):
        k = int(mask.sum())
        split[name] = {"n": k, "accuracy": list(stats.wilson_interval(int(correct[mask].sum()), k)) if k else None}
    return {
        "n_pairs": n,
        "accuracy": list(acc),
        "longer_wins_accuracy": list(longer_wins),
        "longer_wins_ties": longer["ties"],  # pairs of equal length (each counted half)
        "reward_ties": int((r_c == r_r).sum()),  # counted wrong in the accuracy, as the spec says
        "accuracy_by_length": split,
        "reward_length_pearson_r": stats.pearson(np.concatenate([r_c, r_r]), np.concatenate([len_c, len_r])),
        "margin_mean": float((r_c - r_r).mean()),
        "chosen_rewards": r_c.round(4).tolist(),
        "rejected_rewards": r_r.round(4).tolist(),
        "chosen_tokens": len_c.tolist(),
        "rejected_tokens": len_r.tolist(),
    }


def reward_eval_markdown(ev: dict) -> str:
    acc, lw = ev["accuracy"], ev["longer_wins_accuracy"]
    rows = [["accuracy (r_chosen > r_rejected, ties wrong)", stats.format_interval(*acc, 1, pct=True), ev["n_pairs"]],
            ["'longer response wins' baseline", stats.format_interval(*lw, 1, pct=True), ev["n_pairs"]],
            ["chance", "50.0 %", "-"]]
    for name, part in ev["accuracy_by_length"].items():
        label = "accuracy when chosen is longer" if name == "chosen_longer" else "accuracy when chosen is not longer"
        rows.append([label, stats.format_interval(*part["accuracy"], 1, pct=True) if part["accuracy"] else "n/a",
                     part["n"]])
    rows.append(["Pearson r(reward, response tokens)", f"{ev['reward_length_pearson_r']:.3f}", 2 * ev["n_pairs"]])
    c, r = np.array(ev["chosen_rewards"]), np.array(ev["rejected_rewards"])
    rows.append(["reward of chosen: mean ± sd", f"{c.mean():.3f} ± {c.std():.3f}", len(c)])
    rows.append(["reward of rejected: mean ± sd", f"{r.mean():.3f} ± {r.std():.3f}", len(r)])
    return markdown_table(["metric (95 % Wilson interval)", "value", "n"], rows)


def evaluate_reward_checkpoint(cfg: RewardEvalConfig) -> Path:
    """Evaluate a saved reward model on the held-out pairs its training profile kept out; prints the table and
    writes the results JSON (default: reward_eval.json in the checkpoint folder); returns its path."""
    training = profile_defaults(RewardConfig, cfg.profile)
    _, val = train_val_pairs(cfg.dataset or training["dataset"], training["train_size"],
                             cfg.val_size or training["val_size"], cfg.seed)
    model, tok = load_reward_model(cfg.reward_model)
    ev = evaluate_reward_model(model, tok, val.pairs, training["max_length"])
    print(reward_eval_markdown(ev))
    out = Path(cfg.output) if cfg.output else Path(cfg.reward_model) / EVAL_FILE
    write_json(out, ev)
    print(f"written {out}")
    return out


def train_reward_model(cfg: RewardConfig, interrupt_after_epochs: int | None = None) -> Path:
    """Train, keep the best-validation model, evaluate it, write the checkpoint folder; returns its path."""
    from transformers import TrainingArguments

    timer = Timer()
    torch.manual_seed(cfg.seed)
    train_set, val_set = train_val_pairs(cfg.dataset, cfg.train_size, cfg.val_size, cfg.seed)
    print(f"preference pairs: {len(train_set.pairs)} train, {len(val_set.pairs)} validation; "
          f"skipped rows: {train_set.num_skipped} ({dict(train_set.skipped)})", flush=True)
    model, tokenizer = build_reward_model(cfg.base_model, cfg.freeze_layers)
    trainable, total = count_parameters(model)
    train_ds = PairDataset(train_set.pairs, tokenizer, cfg.max_length)
    val_ds = PairDataset(val_set.pairs, tokenizer, cfg.max_length)
    collator = PairCollator(tokenizer.pad_token_id)
    prefix = FrozenPrefix(model, cfg.freeze_layers) if FrozenPrefix.applies(model, cfg.freeze_layers) else None
    if prefix is not None:
        t = Timer()
        # The frozen blocks run where training runs (the GPU, if any): the Trainer later moves only the upper
        # blocks it holds, so the lower ones must be there already for the evaluation after restore().
        model.to(best_device())
        with autocast(cfg.bf16):
            train_ds, val_ds = (CachedPairDataset(ds, prefix, tokenizer.pad_token_id) for ds in (train_ds, val_ds))
        prefix.train_upper_blocks()
        collator = _collate_cached
        # the head pools the last position itself when given inputs_embeds (right for left padding)
        logging.getLogger("transformers.modeling_layers").setLevel(logging.ERROR)
        print(f"frozen blocks 1-{prefix.n} run once per sequence ({t.elapsed_s:.0f} s); "
              f"training the upper {len(prefix.blocks) - prefix.n} blocks and the head on their outputs", flush=True)

    out = Path(cfg.output_dir)
    work = out.parent / f".{out.name}-trainer"
    if not cfg.resume:
        shutil.rmtree(work, ignore_errors=True)
    bf16 = autocast_dtype(cfg.bf16) is not None
    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs, learning_rate=cfg.lr, optim="adamw_torch", weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        save_total_limit=2, logging_steps=5, report_to=cfg.report_to, seed=cfg.seed, data_seed=cfg.seed,
        remove_unused_columns=False, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, disable_tqdm=False, save_only_model=False,
    )
    trainer_cls = _trainer_class()
    trainer_cls.loss_kind, trainer_cls.margin = cfg.loss, cfg.margin
    callbacks = [_stop_after_epochs(interrupt_after_epochs)] if interrupt_after_epochs else []
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          data_collator=collator, compute_metrics=_accuracy_metrics,
                          callbacks=callbacks)
    # Only a checkpoint whose trainer_state.json exists is complete (the Trainer writes that file last); a process
    # killed mid-save leaves a newer, partial checkpoint-N that the Trainer's own "latest" would pick and fail on.
    complete = sorted((p for p in work.glob("checkpoint-*")
                       if p.name.rsplit("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()),
                      key=lambda p: int(p.name.rsplit("-", 1)[1]))
    resume_from = str(complete[-1]) if cfg.resume and complete else None
    if cfg.resume:
        print(f"--resume: continuing from {complete[-1]}" if complete else
              f"--resume: no saved training state in {work}; starting from scratch.", flush=True)
    trainer.train(resume_from_checkpoint=resume_from)
    if interrupt_after_epochs:
        return work  # a simulated interruption: training state saved, no final checkpoint
    if not trainer.is_world_process_zero():  # under torchrun/accelerate only rank 0 evaluates and saves
        return out

    if prefix is not None:
        prefix.restore()  # the whole model again, for the evaluation on text and the checkpoint
    history = [h for h in trainer.state.log_history if "eval_loss" in h]
    best = min(history, key=lambda h: h["eval_loss"])
    model = trainer.model.float().eval()
    with autocast(cfg.bf16):
        ev = evaluate_reward_model(model, tokenizer, val_set.pairs, cfg.max_length, cfg.batch_size * 2)
    ev.update(best_epoch=best["epoch"], best_eval_loss=best["eval_loss"], eval_history=history,
              train_pairs=len(train_set.pairs), skipped_rows=dict(train_set.skipped), train_seconds=timer.elapsed_s)
    print(reward_eval_markdown(ev), flush=True)

    def write(folder: Path):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json(folder / EVAL_FILE, ev)
        write_json(folder / "training_config.json", asdict(cfg))
        write_json(folder / "log_history.json", trainer.state.log_history)
        _write_card(folder, cfg, ev, trainable, total, train_set, timer.elapsed_s)

    save_atomically(out, write)
    print(f"reward model saved to {out} ({timer.elapsed_s:.0f} s)", flush=True)
    report_push(out, cfg.push_to_hub)
    return out


def _stop_after_epochs(n: int):
    """Test hook: stop training after n epochs as an interruption would (state saved, no final save)."""
    from transformers import TrainerCallback

    class StopAfterEpochs(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.epoch is not None and state.epoch >= n - 1e-6:
                control.should_training_stop = True
            return control

    return StopAfterEpochs()


def _write_card(folder, cfg, ev, trainable, total, train_set, seconds):
    acc, lw = ev["accuracy"], ev["longer_wins_accuracy"]
    demo = cfg.profile == "demo" or "data/demo" in cfg.dataset
    data_line = (f"`{cfg.dataset}` — **embedded stand-in data written for this project in hh-rlhf format, "
                 f"not Anthropic/hh-rlhf**" if demo else f"`{cfg.dataset}`")
    metadata = {
        "library_name": "transformers", "base_model": cfg.base_model, "pipeline_tag": "text-classification",
        "tags": ["reward-model", "rlhf", "rlhflab"], "datasets": [cfg.dataset],
        "model-index": [{"name": Path(cfg.output_dir).name, "results": [{
            "task": {"type": "text-classification", "name": "preference accuracy"},
            "metrics": [{"type": "accuracy", "value": round(acc[0], 4)}]}]}],
    }
    hp = markdown_table(["hyperparameter", "value"], [[k, v] for k, v in asdict(cfg).items() if k != "push_to_hub"])
    sections = {
        "What this is": (f"A reward model: `{cfg.base_model}` with a one-label sequence-classification head "
                         f"(the shape TRL's PPO expects of a reward model). It scores a prompt + response; higher is "
                         f"better. Trained with the {cfg.loss} pairwise loss on {len(train_set.pairs)} preference pairs "
                         f"({train_set.num_skipped} rows skipped: {dict(train_set.skipped)}).\n\nData: {data_line}."),
        "Held-out evaluation": (f"{ev['n_pairs']} validation pairs, best epoch {ev['best_epoch']:.0f} "
                                f"(validation loss {ev['best_eval_loss']:.4f}). Accuracy "
                                f"**{stats.format_interval(*acc, 1, pct=True)}** vs 'longer wins' "
                                f"{100 * lw[0]:.1f} % and chance 50 %.\n\n" + reward_eval_markdown(ev)
                                + "\n\nPublished anchors on hh-rlhf: GPT-2-medium reward models reach about 61–67 %; "
                                  "'longer wins' is about 55 %."),
        "Parameters": f"trainable {trainable:,} of {total:,}",
        "Hyperparameters": hp,
        "How it was made": f"`{command_line()}` in {seconds:.0f} s on {hardware_description()}.",
        "Use": ("```python\nfrom rlhflab.models import load_reward_model\nfrom rlhflab.scoring import score_responses\n"
                "model, tok = load_reward_model('PATH_OR_REPO')\nscore_responses(model, tok, ['Hi'], ['Hello!'])\n```"),
    }
    write_model_card(folder, metadata, f"Reward model ({Path(cfg.output_dir).name})", sections)
