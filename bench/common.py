"""Shared helpers for the benchmarks: machine description and result records."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    from rlhflab.models.hardware import hardware_description

    return hardware_description()


def host_class() -> str:
    """The precision class a bench's figures belong to: "bf16" on a CPU with native bf16 (AMX, AVX512-BF16) or a GPU,
    "fp32" elsewhere (an AVX2 laptop runs every path in fp32). run_all keeps one record per bench and class, so an
    AVX2 run adds its rows beside the bf16 host's instead of replacing them."""
    from rlhflab.models.precision import runs_bf16

    return "bf16" if runs_bf16() else "fp32"


def results_key(name: str, cls: str | None = None) -> str:
    """results.json's key for a bench on a host class: the bare name for bf16 (every earlier record), name@fp32 else."""
    cls = cls or host_class()
    return name if cls == "bf16" else f"{name}@{cls}"


def command() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


class Stopwatch:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def demo_ppo_metrics(trainer_class: type | None = None, **cfg_overrides) -> tuple[list[dict], object]:
    """Run PPO with the demo profile (plus overrides) into a temporary folder; (metrics records, config).
    `trainer_class`: train_ppo's (a subclass of rlhflab.training.ppo.lab_ppo_trainer())."""
    import tempfile

    from rlhflab.config import CHECKPOINTS_DIR, PPOConfig, build_config
    from rlhflab.store.checkpoints import METRICS_FILE
    from rlhflab.store.jsonio import read_jsonl
    from rlhflab.training.ppo import train_ppo

    cfg_overrides.setdefault("reward_model", str(CHECKPOINTS_DIR / "reward"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(PPOConfig, "demo", output_dir=str(Path(tmp) / "ppo"), **cfg_overrides)
        train_ppo(cfg, trainer_class=trainer_class)
        return read_jsonl(Path(tmp) / "ppo" / METRICS_FILE), cfg


def demo_ppo_run(trainer_class: type | None = None, on_step=None, **cfg_overrides) -> dict:
    """Run PPO with the demo profile (plus overrides) into a temporary folder; what it wrote, read back:
    {"metrics": per-step records, "overopt": probe records, "info": ppo_info.json, "cfg": the config}."""
    import json
    import tempfile

    from rlhflab.config import CHECKPOINTS_DIR, PPOConfig, build_config
    from rlhflab.measure.overopt import read_overopt
    from rlhflab.store.checkpoints import METRICS_FILE
    from rlhflab.store.jsonio import read_jsonl
    from rlhflab.training.ppo import PPO_INFO_FILE, train_ppo

    cfg_overrides.setdefault("reward_model", str(CHECKPOINTS_DIR / "reward"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(PPOConfig, "demo", output_dir=str(Path(tmp) / "ppo"), **cfg_overrides)
        out = train_ppo(cfg, on_step=on_step, trainer_class=trainer_class)
        return {"metrics": read_jsonl(out / METRICS_FILE), "overopt": read_overopt(out),
                "info": json.loads((out / PPO_INFO_FILE).read_text()), "cfg": cfg}


def with_trl_args(overrides: dict) -> type | None:
    """train_ppo's trainer with TRL's PPOConfig fields in `overrides` set before TRL reads them (None: no change)."""
    if not overrides:
        return None
    from rlhflab.training.ppo import lab_ppo_trainer

    class TRLArgsOverridden(lab_ppo_trainer()):
        def __init__(self, *args, **kwargs):
            for key, value in overrides.items():
                setattr(kwargs["args"], key, value)
            super().__init__(*args, **kwargs)

    return TRLArgsOverridden


def spread(values: list[float]) -> dict:
    """Median, min, max and quartiles of repeated timings (seconds), with their count."""
    import statistics

    values = sorted(values)
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"n": len(values), "median": statistics.median(values), "min": values[0], "max": values[-1],
            "q1": q[0], "q3": q[2], "values": values}


def tiny_models(folder: Path) -> dict:
    """A 2-block, hidden-64 Llama policy and a reward model on it, with the embedded SmolLM2 tokenizer (so the
    demo data tokenizes as it does for the real model): the benches' --tiny runs check their code paths in seconds.
    Returns {"base_model": folder, "reward_model": folder}."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlhflab.models.loading import EMBEDDED_MODELS, embedded_gguf

    folder = Path(folder)
    policy_dir, reward_dir = folder / "tiny-policy", folder / "tiny-reward"
    if (reward_dir / "config.json").is_file():
        return {"base_model": str(policy_dir), "reward_model": str(reward_dir)}
    gguf = embedded_gguf("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=EMBEDDED_MODELS["smollm2-135m-instruct"][1])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1).save_pretrained(reward_dir)
    tok.save_pretrained(reward_dir)
    return {"base_model": str(policy_dir), "reward_model": str(reward_dir)}
