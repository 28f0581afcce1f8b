"""Reward-model training on preference pairs with transformers' Trainer, and the reward model's evaluation."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rlhflab.config import CHECKPOINTS_DIR, RewardConfig, RewardEvalConfig, profile_defaults
from rlhflab.data._io import is_local
from rlhflab.data.hh_rlhf import SPLIT_FILE, PreferencePair, pairs_by_id, preference_split
from rlhflab.errors import UserError
from rlhflab.measure import stats
from rlhflab.measure.scoring import encode_for_reward, left_pad, reward_forward, score_responses
from rlhflab.models.hardware import best_device
from rlhflab.models.loading import count_parameters, freeze_lower_layers, load_reward_model, load_tokenizer, model_path
from rlhflab.models.precision import autocast, autocast_dtype
from rlhflab.store.cards import Timer, how_it_was_made, markdown_table, write_model_card
from rlhflab.store.checkpoints import resolve_checkpoint, save_atomically
from rlhflab.store.hub import report_push
from rlhflab.store.jsonio import write_json

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
        "correct": correct.astype(int).tolist(),  # per pair, in order: what a paired comparison of two models needs
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
    rows = [["accuracy (r_chosen > r_rejected, ties wrong; Wilson interval)", stats.format_interval(*acc, 1, pct=True),
             ev["n_pairs"]],
            ["'longer response wins' baseline (equal lengths count half; bootstrap interval over pairs)",
             stats.format_interval(*lw, 1, pct=True), ev["n_pairs"]],
            ["chance", "50.0 %", "-"]]
    for name, part in ev["accuracy_by_length"].items():
        label = ("accuracy when chosen is longer" if name == "chosen_longer" else "accuracy when chosen is not longer") \
            + " (Wilson interval)"
        rows.append([label, stats.format_interval(*part["accuracy"], 1, pct=True) if part["accuracy"] else "n/a",
                     part["n"]])
    rows.append(["Pearson r(reward, response tokens)", f"{ev['reward_length_pearson_r']:.3f}", 2 * ev["n_pairs"]])
    c, r = np.array(ev["chosen_rewards"]), np.array(ev["rejected_rewards"])
    rows.append(["reward of chosen: mean ± sd", f"{c.mean():.3f} ± {c.std():.3f}", len(c)])
    rows.append(["reward of rejected: mean ± sd", f"{r.mean():.3f} ± {r.std():.3f}", len(r)])
    return markdown_table(["metric (95 % interval, method named per row)", "value", "n"], rows)


def _training_value(folder: Path, key: str, default):
    """A setting of the run that made a checkpoint (its training_config.json), else `default`."""
    path = folder / "training_config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get(key, default)
    return default


def _read_split(folder: Path) -> dict | None:
    path = folder / SPLIT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _test_pairs(cfg: RewardEvalConfig, folder: Path) -> tuple[list[PreferencePair], str, dict | None]:
    """The reward model's own test pairs (its split.json), or for a checkpoint without one the test part of
    --dataset (which does not depend on the seed); (pairs, dataset, split record)."""
    record = _read_split(folder)
    if record is None:
        if not cfg.dataset:
            raise UserError(f"{cfg.reward_model} has no {SPLIT_FILE} naming its test pairs (it predates the saved "
                            f"split, or is not from training/reward.py); pass --dataset to evaluate it on that "
                            f"dataset's test part, or retrain it.")
        size = cfg.test_size or profile_defaults(RewardConfig, cfg.profile)["test_size"]
        split = preference_split(cfg.dataset, 0, dev_size=1, test_size=size)
        return split.test.pairs, cfg.dataset, None
    dataset = cfg.dataset or record["dataset"]
    if is_local(dataset) and not Path(dataset).exists():
        raise UserError(f"{folder / SPLIT_FILE} names the dataset {dataset}, which is not on this machine; pass "
                        f"--dataset with the path of a copy.")
    return pairs_by_id(dataset, record["ids"]["test"]), dataset, record


def _default_output(reward_model: str) -> Path:
    folder = Path(reward_model)
    if folder.is_dir():
        return folder / EVAL_FILE
    return CHECKPOINTS_DIR / "eval" / f"reward_eval_{reward_model.replace('/', '--')}.json"


def independence(reward_split: dict | None, judge_split: dict | None) -> dict | None:
    """How many pairs the two models share: of training (train + dev), and of the judge's training with the test
    pairs; both 0 for a reward model and judge from the same data (disjoint sides, one test part)."""
    if reward_split is None or judge_split is None:
        return None
    seen = lambda r: set(r["ids"]["train"]) | set(r["ids"]["dev"])  # noqa: E731
    return {"shared_training_pairs": len(seen(reward_split) & seen(judge_split)),
            "judge_training_pairs_in_test": len(seen(judge_split) & set(reward_split["ids"]["test"])),
            "same_dataset": reward_split["dataset"] == judge_split["dataset"]}


def compare_on_same_pairs(evals: dict[str, dict], bootstrap_samples: int = 2000) -> dict:
    """Accuracy of several reward models on the same pairs, and each one's paired difference to the first
    (per-pair correctness resampled jointly: the interval of a difference, not of two separate accuracies)."""
    names = list(evals)
    first = np.asarray(evals[names[0]]["correct"])
    out = {"n_pairs": len(first), "models": {n: {"accuracy": evals[n]["accuracy"]} for n in names}, "differences": {}}
    for name in names[1:]:
        other = np.asarray(evals[name]["correct"])
        if other.shape != first.shape:
            raise ValueError("models compared on the same pairs must have been evaluated on the same pairs")
        out["differences"][f"{name} - {names[0]}"] = {
            "accuracy_difference": list(stats.paired_bootstrap_diff(other, first, samples=bootstrap_samples)),
            "only_this_right": int(((other == 1) & (first == 0)).sum()),
            "only_first_right": int(((other == 0) & (first == 1)).sum())}
    return out


def comparison_markdown(comparison: dict, paths: dict[str, str]) -> str:
    n = comparison["n_pairs"]
    rows = [[name, f"`{paths[name]}`", stats.format_interval(*m["accuracy"], 1, pct=True), n]
            for name, m in comparison["models"].items()]
    for label, d in comparison["differences"].items():
        rows.append([f"difference {label}", "paired bootstrap over the same pairs",
                     stats.format_interval(*d["accuracy_difference"], 1, pct=True, signed=True).replace("%", "pp"),
                     f"{n} ({d['only_this_right']} only {label.split(' - ')[0]} right, "
                     f"{d['only_first_right']} only {label.split(' - ')[1]} right)"])
    return markdown_table(["model", "checkpoint", "test accuracy (95 % interval; ties wrong)", "pairs"], rows)


def evaluate_reward_checkpoint(cfg: RewardEvalConfig) -> Path:
    """Evaluate a saved reward model on exactly the test pairs of its split.json (and, with `judge_model`, a second
    reward model on the same pairs, side by side); prints the tables, writes the results JSON (default:
    reward_eval.json in the checkpoint folder, the training run's other entries kept); returns its path."""
    folder = resolve_checkpoint(cfg.reward_model)
    test, dataset, record = _test_pairs(cfg, folder)
    default_length = profile_defaults(RewardConfig, cfg.profile)["max_length"]
    model, tok = load_reward_model(cfg.reward_model)
    # under the training run's precision (its bf16 autocast), so the figures repeat the ones in its card
    with autocast(_training_value(folder, "bf16", False)):
        ev = evaluate_reward_model(model, tok, test, _training_value(folder, "max_length", default_length))
    ev.update(part="test", dataset=dataset)
    print(f"{len(test)} test pairs of {dataset}" + (f" (from {folder / SPLIT_FILE})" if record else ""))
    print(reward_eval_markdown(ev))
    if cfg.judge_model:
        del model
        judge_folder = resolve_checkpoint(cfg.judge_model)
        judge, judge_tok = load_reward_model(cfg.judge_model)
        with autocast(_training_value(judge_folder, "bf16", False)):
            ev_judge = evaluate_reward_model(judge, judge_tok, test,
                                             _training_value(judge_folder, "max_length", default_length))
        comparison = compare_on_same_pairs({"reward model": ev, "judge": ev_judge})
        comparison["judge_eval"] = ev_judge
        comparison["judge_model"] = cfg.judge_model
        comparison["independence"] = independence(record, _read_split(judge_folder))
        print("\nthe same test pairs, both models:")
        print(comparison_markdown(comparison, {"reward model": cfg.reward_model, "judge": cfg.judge_model}))
        ind = comparison["independence"]
        if ind and (ind["shared_training_pairs"] or ind["judge_training_pairs_in_test"]):
            print(f"warning: not independent: {ind['shared_training_pairs']} pairs are in both models' train + dev "
                  f"parts and the judge trained on {ind['judge_training_pairs_in_test']} of the test pairs (another "
                  f"dataset, --judge-share or --test-size?).")
        ev["same_pairs_comparison"] = comparison
    out = Path(cfg.output) if cfg.output else _default_output(cfg.reward_model)
    previous = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**previous, **ev})  # the training run's dev results and history stay beside the new test results
    print(f"written {out}")
    return out


def split_for(cfg: RewardConfig):
    """The preference split a reward-model run of this config trains, picks its epoch and reports on."""
    sizes = {"train_size" if cfg.role == "reward" else "judge_train_size": cfg.train_size}
    return preference_split(cfg.dataset, cfg.seed, dev_size=cfg.dev_size, test_size=cfg.test_size,
                            judge_share=cfg.judge_share, **sizes)


def train_reward_model(cfg: RewardConfig, interrupt_after_epochs: int | None = None) -> Path:
    """Train on the role's train part, keep the epoch with the best dev loss, evaluate it on the shared test part,
    write the checkpoint folder (with split.json); returns its path."""
    from transformers import TrainingArguments

    timer = Timer()
    torch.manual_seed(cfg.seed)
    split = split_for(cfg)
    train_set, dev_set = split.role_parts(cfg.role)
    test_pairs = split.test.pairs
    side = "policy" if cfg.role == "reward" else "judge"
    print(f"{cfg.role} model, {side} side of the preference pairs: {len(train_set.pairs)} train, "
          f"{len(dev_set.pairs)} dev (picks the epoch); {len(test_pairs)} test (shared, reported); skipped rows: "
          f"{sum(split.skipped.values())} ({dict(split.skipped)})", flush=True)
    if len(train_set.pairs) < 2:
        raise UserError(f"dataset {cfg.dataset} leaves {len(train_set.pairs)} training pairs on the {side} side; "
                        f"use a larger file or change --judge-share ({cfg.judge_share}).")
    model, tokenizer = build_reward_model(cfg.base_model, cfg.freeze_layers)
    trainable, total = count_parameters(model)
    train_ds = PairDataset(train_set.pairs, tokenizer, cfg.max_length)
    dev_ds = PairDataset(dev_set.pairs, tokenizer, cfg.max_length)
    collator = PairCollator(tokenizer.pad_token_id)
    prefix = FrozenPrefix(model, cfg.freeze_layers) if FrozenPrefix.applies(model, cfg.freeze_layers) else None
    if prefix is not None:
        t = Timer()
        # The frozen blocks run where training runs (the GPU, if any): the Trainer later moves only the upper
        # blocks it holds, so the lower ones must be there already for the evaluation after restore().
        model.to(best_device())
        with autocast(cfg.bf16):
            train_ds, dev_ds = (CachedPairDataset(ds, prefix, tokenizer.pad_token_id) for ds in (train_ds, dev_ds))
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
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
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
        ev = evaluate_reward_model(model, tokenizer, test_pairs, cfg.max_length, cfg.batch_size * 2)
        dev_ev = evaluate_reward_model(model, tokenizer, dev_set.pairs, cfg.max_length, cfg.batch_size * 2)
    # the dev pairs chose the epoch, so their accuracy is optimistic: kept apart from the test accuracy, and labelled
    ev.update(part="test", dataset=cfg.dataset, role=cfg.role,
              dev={"n_pairs": dev_ev["n_pairs"], "accuracy": dev_ev["accuracy"], "loss": best["eval_loss"],
                   "note": "picked the best epoch; not held out"},
              best_epoch=best["epoch"], best_eval_loss=best["eval_loss"], eval_history=history,
              train_pairs=len(train_set.pairs), skipped_rows=dict(split.skipped), train_seconds=timer.elapsed_s)
    print(f"test part ({len(test_pairs)} pairs):", flush=True)
    print(reward_eval_markdown(ev), flush=True)

    def write(folder: Path):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json(folder / EVAL_FILE, ev)
        write_json(folder / "training_config.json", asdict(cfg))
        write_json(folder / "log_history.json", trainer.state.log_history)
        write_json(folder / SPLIT_FILE, split.record(cfg.role))
        _write_card(folder, cfg, ev, trainable, total, split, timer.elapsed_s)

    save_atomically(out, write)
    print(f"{cfg.role} model saved to {out} ({timer.elapsed_s:.0f} s)", flush=True)
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


def _write_card(folder, cfg, ev, trainable, total, split, seconds):
    acc, lw, dev = ev["accuracy"], ev["longer_wins_accuracy"], ev["dev"]
    judge = cfg.role == "judge"
    train_set, _ = split.role_parts(cfg.role)
    demo = cfg.profile == "demo" or "data/demo" in cfg.dataset
    data_line = (f"`{cfg.dataset}` — **embedded stand-in data written for this project in hh-rlhf format, "
                 f"not Anthropic/hh-rlhf**" if demo else f"`{cfg.dataset}`")
    name = Path(cfg.output_dir).name
    metadata = {
        "library_name": "transformers", "base_model": cfg.base_model, "pipeline_tag": "text-classification",
        "tags": ["reward-model", "rlhf", "rlhflab"] + (["judge"] if judge else []), "datasets": [cfg.dataset],
        "model-index": [{"name": name, "results": [{
            "task": {"type": "text-classification", "name": "preference accuracy (test pairs)"},
            "metrics": [{"type": "accuracy", "value": round(acc[0], 4)}]}]}],
    }
    hp = markdown_table(["hyperparameter", "value"], [[k, v] for k, v in asdict(cfg).items() if k != "push_to_hub"])
    role = ("The independent **judge**: a reward model that scores policies and is never used to train one. It "
            "trained on the judge side of the data, which shares no prompt with the policy side (what the reward "
            "model, SFT and DPO train on), and has its own seed — the gold model of the reward over-optimisation "
            "protocol, so a gain it confirms is not the policy exploiting the model it was optimised against. Its "
            "recipe is its own (rlhflab.config.ROLE_OVERRIDES: in the demo every block trains, where the reward model "
            "freezes its lower 24, with another loss and learning rate), and the evaluation report measures how much "
            "it agrees with the reward model (\"Judge independence\"). Where a GPU is at hand, `--base-model` takes "
            "any larger Hub model (e.g. `--base-model Qwen/Qwen2.5-1.5B-Instruct`) for a judge that shares not even "
            "the base."
            if judge else
            "The **training reward model**: the reward the RL policies (PPO, GRPO, best-of-n) optimise. It trained on "
            "the policy side of the data (SFT and DPO draw from the same side); the independent judge trained on "
            "the other, disjoint side.")
    side = "judge" if judge else "policy"
    parts = markdown_table(["part", "pairs", "what it is for"], [
        ["train", len(train_set.pairs), f"the {side} side (pairs whose prompt hash falls on it), seed {cfg.seed}"],
        ["dev", dev["n_pairs"], f"picks the epoch (best: {ev['best_epoch']:.0f}, dev loss {dev['loss']:.4f}, dev "
                                f"accuracy {stats.format_interval(*dev['accuracy'], 1, pct=True)}: not held out)"],
        ["test", ev["n_pairs"], "shared by the reward model and the judge, the same for every seed; only reported"]])
    sections = {
        "What this is": (f"A reward model: `{cfg.base_model}` with a one-label sequence-classification head "
                         f"(the shape TRL's PPO expects of a reward model). It scores a prompt + response; higher is "
                         f"better. Trained with the {cfg.loss} pairwise loss on {len(train_set.pairs)} preference pairs "
                         f"({sum(split.skipped.values())} rows of the data skipped: {dict(split.skipped)}).\n\n"
                         f"{role}\n\nData: {data_line}."),
        "Data split": (parts + f"\n\nNo prompt is in two parts. A pair's side is fixed by a hash of its prompt and "
                       f"the judge's share ({split.judge_share}): the judge side holds {split.side_sizes['judge']} and "
                       f"the policy side {split.side_sizes['policy']} of the pairs outside the test part. `{SPLIT_FILE}` "
                       f"lists the ids of each part; `python "
                       f"eval/reward_model.py --reward-model checkpoints/reward --judge-model checkpoints/judge` "
                       f"evaluates both models on exactly the test pairs, side by side."),
        "Held-out evaluation": (f"{ev['n_pairs']} test pairs, never used to train or to choose the epoch. Accuracy "
                                f"**{stats.format_interval(*acc, 1, pct=True)}** vs 'longer wins' "
                                f"{100 * lw[0]:.1f} % and chance 50 %.\n\n" + reward_eval_markdown(ev)),
        "Parameters": f"trainable {trainable:,} of {total:,}",
        "Hyperparameters": hp,
        "How it was made": how_it_was_made(seconds, cfg.bf16),
        "Use": ("```python\nfrom rlhflab.models.loading import load_reward_model\nfrom rlhflab.measure.scoring import score_responses\n"
                "model, tok = load_reward_model('PATH_OR_REPO')\nscore_responses(model, tok, ['Hi'], ['Hello!'])\n```"),
    }
    title = f"Independent judge ({name})" if judge else f"Reward model ({name})"
    write_model_card(folder, metadata, title, sections)
