"""Direct preference optimisation (DPO) of a policy on preference pairs, with TRL's DPOTrainer.

The reference is the policy the run starts from (--init-from, else --base-model). Around TRL it adds the exact
per-token KL to that reference on the chosen responses, logged each step beside TRL's implicit rewards."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from rlhflab.config import DPOConfig
from rlhflab.data.hh_rlhf import PreferencePair, policy_training_pairs
from rlhflab.measure.kl import exact_kl_sum
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

KL_ESTIMATOR = "exact"  # sum over the whole vocabulary of p log(p/q), not a sampled estimate


def dpo_examples(pairs: list[PreferencePair], tokenizer, system: str | None = None) -> list[dict]:
    """TRL preference examples: chat messages when the tokenizer has a chat template, else plain
    'Human:/Assistant:' text (rlhflab.models.prompts.format_prompt)."""
    if getattr(tokenizer, "chat_template", None):
        return [{"prompt": with_system(p.messages, system), "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    return [{"prompt": format_prompt(tokenizer, with_system(p.messages, system)),
             "chosen": format_response(tokenizer, p.chosen),
             "rejected": format_response(tokenizer, p.rejected)} for p in pairs]


def kl_sum_and_tokens(policy_logits: torch.Tensor, ref_logits: torch.Tensor, completion_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ KL(policy ‖ reference) over the chosen responses' tokens, their count): the exact KL of each next-token
    distribution, Σ_v p log(p/q) over the vocabulary, in nats. Rows are TRL's [chosen..., rejected...] batch."""
    half = completion_mask.shape[0] // 2
    at = completion_mask[:half, 1:]  # logits at position t predict token t + 1
    return exact_kl_sum(policy_logits[:half, :-1], ref_logits[:half, :-1], at)


def _trainer_class():
    from trl import DPOTrainer

    class KLLoggingDPOTrainer(DPOTrainer):
        """DPOTrainer that also logs the exact per-token KL to the reference on the chosen responses.

        TRL's loss runs the policy and then the reference on the same batch and keeps only the sequence
        log-probs; forward hooks keep both full logits of that one computation (the policy's forward comes
        first, the reference's second — in LoRA mode both are the same module, the second with the adapter
        disabled), so the KL costs no extra forward pass.
        """

        def attach_kl_probe(self):
            self._captured: list[torch.Tensor] = []
            self._kl_sum, self._kl_tokens = 0.0, 0

            def keep_logits(module, args, kwargs, output):
                self._captured.append(output.logits.detach())

            policy = self.accelerator.unwrap_model(self.model)
            policy.register_forward_hook(keep_logits, with_kwargs=True)
            if self.ref_model is not None:
                self.accelerator.unwrap_model(self.ref_model).register_forward_hook(keep_logits, with_kwargs=True)

        def _compute_loss(self, model, inputs, return_outputs):
            self._captured.clear()
            result = super()._compute_loss(model, inputs, return_outputs)
            if self.model.training and len(self._captured) == 2:
                kl, n = kl_sum_and_tokens(self._captured[0], self._captured[1], inputs["completion_mask"])
                self._kl_sum += self.accelerator.gather_for_metrics(kl.reshape(1)).sum().item()
                self._kl_tokens += int(self.accelerator.gather_for_metrics(n.reshape(1)).sum().item())
            self._captured.clear()
            return result

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if self.model.training and self._kl_tokens:
                # total KL over total tokens of the steps since the last log (one step with logging_steps=1)
                logs["kl_per_token"] = self._kl_sum / self._kl_tokens
                self._kl_sum, self._kl_tokens = 0.0, 0
            super().log(logs, start_time)

    return KLLoggingDPOTrainer


def build_dpo_trainer(cfg: DPOConfig, pairs: list[PreferencePair], work: Path, callbacks: list | None = None):
    """(DPO trainer, start name): the start policy, its reference (a frozen copy in full mode; in LoRA mode the
    same model with the adapter disabled) and the tokenized pairs."""
    import datasets
    from trl import DPOConfig as TRLDPOConfig

    # TRL 1.12 asks at every step, by the name transformers 5 deprecated, whether checkpointing is on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    model, tokenizer, start = load_start_policy(cfg.base_model, cfg.init_from)
    ref_model, peft_config = None, None
    if cfg.mode == "lora":
        peft_config = lora_config(cfg, model)
    else:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    dataset = datasets.Dataset.from_list(dpo_examples(pairs, tokenizer, cfg.system_prompt))
    args = TRLDPOConfig(beta=cfg.beta, **common_trainer_args(cfg, work))
    trainer = _trainer_class()(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                               processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    require_examples(trainer, len(dataset), cfg)
    trainer.attach_kl_probe()
    return trainer, start


def _to_record(logs: dict, state) -> dict:
    nan = float("nan")
    return {"epoch": float(logs.get("epoch", state.epoch or 0.0)),
            "loss": float(logs["loss"]),
            # TRL's implicit rewards: beta x (log-prob under the policy - under the reference), nats
            "reward_margin": float(logs.get("rewards/margins", nan)),
            "preference_accuracy": float(logs.get("rewards/accuracies", nan)),
            "reward_chosen": float(logs.get("rewards/chosen", nan)),
            "reward_rejected": float(logs.get("rewards/rejected", nan)),
            # log-probability of the whole response under the policy, nats
            "logp_chosen": float(logs.get("logps/chosen", nan)),
            "logp_rejected": float(logs.get("logps/rejected", nan)),
            "kl_per_token": float(logs.get("kl_per_token", nan)),
            "kl_estimator": KL_ESTIMATOR,
            "entropy_per_token": float(logs.get("entropy", nan))}


def train_dpo(cfg: DPOConfig, callbacks: list | None = None) -> Path:
    """Run DPO from the start policy against itself as the reference; write the checkpoint; return its path.

    `callbacks`: extra transformers TrainerCallbacks (the tests interrupt a run with one).
    """
    timer = Timer()
    torch.manual_seed(cfg.seed)
    # the policy side only: the judge trains on the other side and must not have seen a policy's data
    train_set = policy_training_pairs(cfg.dataset, cfg.train_size, cfg.seed, cfg.judge_share)  # bad data stops here
    print(f"preference pairs: {len(train_set.pairs)}; skipped rows: {train_set.num_skipped} "
          f"({dict(train_set.skipped)})", flush=True)
    out = policy_output_dir("dpo", cfg.mode, cfg.output_dir)
    work = out.parent / f".{out.name}-work"
    log_path = work / METRICS_FILE
    with removed_on_failure(work):
        trainer, start = build_dpo_trainer(cfg, train_set.pairs, work, callbacks)
    resume_from = prepare_resume(work, log_path, cfg.resume)
    run_trainer(trainer, log_path, _to_record, resume_from, lambda r: (
        f"loss {r['loss']:.4f}, reward margin {r['reward_margin']:.3f} nats, preference accuracy "
        f"{r['preference_accuracy']:.2f}, KL {r['kl_per_token']:.4f} nats/token"))
    if not trainer.is_world_process_zero():
        return out
    return _save(cfg, trainer, start, train_set, log_path, out, timer)


def _save(cfg: DPOConfig, trainer, start: str, train_set, log_path: Path, out: Path, timer: Timer) -> Path:
    """The checkpoint folder with its card."""
    policy, args = trainer.model, trainer.args
    trainable, total = count_parameters(policy)
    keys = ["loss", "reward_margin", "preference_accuracy", "kl_per_token", "logp_chosen", "logp_rejected"]
    columns, first, last = window_means(read_jsonl(log_path), keys)
    info = {"steps": trainer.state.global_step, "pairs": len(trainer.train_dataset), "beta": cfg.beta,
            "reference": start, "kl_estimator": KL_ESTIMATOR, "trainable_params": trainable, "total_params": total,
            "bf16": args.bf16, "seconds": timer.elapsed_s,
            "summary": {"windows": columns, "first": first, "last": last}}
    rows = [["DPO loss", "{:.4f}", "loss"],
            ["reward margin β·Δlog-ratio (nats)", "{:.4f}", "reward_margin"],
            ["preference accuracy (chosen's implicit reward higher)", "{:.3f}", "preference_accuracy"],
            ["KL to the reference on chosen responses (nats/token, exact)", "{:.4f}", "kl_per_token"],
            ["log-prob of chosen response (nats)", "{:.2f}", "logp_chosen"],
            ["log-prob of rejected response (nats)", "{:.2f}", "logp_rejected"]]
    result = markdown_table(["metric", *columns],
                            [[name, fmt.format(first[key]), fmt.format(last[key])] for name, fmt, key in rows])
    peft_config = getattr(policy, "peft_config", {}).get("default")
    reference = ("the same model with the adapter disabled" if cfg.mode == "lora"
                 else "a frozen copy of the start policy")
    sections = {
        "What this is": (f"A policy ({cfg.mode}) trained with direct preference optimisation (DPO, β = {cfg.beta}) "
                         f"from `{start}` with TRL's DPOTrainer; the reference is that start policy ({reference}). "
                         f"{adapter_sentence(cfg, start, peft_config)}\n\n"
                         + preference_data_line(cfg, len(trainer.train_dataset), dict(train_set.skipped),
                                                "preference pairs")),
        "Parameters": f"trainable {trainable:,} of {total:,}",
        "Training result": (f"{info['steps']} optimizer steps of {cfg.batch_size} pairs:\n\n{result}\n\n"
                            f"Step 1 scores the reference itself: every margin is 0 and its accuracy 0 (ties count "
                            f"as wrong). Per-step metrics: `{METRICS_FILE}` (its KL is Σ_v p log(p/q) over the "
                            f"vocabulary at each chosen-response token, total KL over total tokens)."),
        "Hyperparameters": hyperparameter_table(cfg),
        "How it was made": how_it_was_made(timer.elapsed_s, cfg.bf16),
        "Use": "```python\nfrom rlhflab.models.loading import load_policy\nmodel, tok = load_policy('PATH_OR_REPO')\n```",
    }
    return save_policy_checkpoint(out, policy, trainer.processing_class, cfg, method="dpo", start=start, info=info,
                                  title=f"DPO policy ({cfg.mode})", sections=sections, metrics_path=log_path,
                                  work_dir=log_path.parent)
