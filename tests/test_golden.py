"""Golden outputs of a fixed-seed tiny run of each policy trainer (SFT, DPO, full PPO, GRPO), recorded before the
trainers were restructured: a refactor that changes what a trainer computes fails here.

Each run records, in tests/golden/<trainer>.json:
- every metrics.jsonl record (timings dropped), and the over-optimisation probe's records (PPO, GRPO);
- the `rlhflab` block of the checkpoint's card, the card's title and section headings, the checkpoint's file names;
- the token ids of every batch the run sampled (rollouts and probe answers, in order);
- two fingerprints of the saved weights (sum and sum of squares over every parameter).

Tolerance: floats are equal up to rtol 1e-4, atol 1e-6 (enough for the order of a reduction changing with the
thread count or the CPU's vector width, far below any change in what is computed; ATOL_BY_KEY widens it for a value
that is zero up to rounding); ints, strings and token ids are equal exactly.
Regenerate (only when a change of behaviour is intended): RLHFLAB_REGENERATE_GOLDEN=1 pytest tests/test_golden.py
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import hh_row, tiny_cfg, write_jsonl

GOLDEN_DIR = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("RLHFLAB_REGENERATE_GOLDEN") == "1"
RTOL, ATOL = 1e-4, 1e-6
# PPO's policy loss at a pass's first minibatch is minus the mean of whitened advantages: zero up to rounding, so its
# recorded value is the rounding of the CPU that ran it (4.5e-7 on an AVX-512 host, 3.6e-6 on an AVX2 one). An
# absolute tolerance at the scale of that rounding of O(1) terms keeps the check without tying it to one ISA.
ATOL_BY_KEY = {"policy_loss": 1e-5}
TIMING_KEYS = {"seconds_per_step", "seconds"}


# ---------------------------------------------------------------- recording
class SampledBatches:
    """Records the token ids of every batch sampled through rlhflab.generation.sampling.sample_responses, wherever a
    module imported it by name (the trainers may move; the one sampler stays)."""

    def __init__(self, monkeypatch):
        from rlhflab.generation import sampling

        original = sampling.sample_responses
        self.batches: list[list[list[int]]] = []

        def recording(*args, **kwargs):
            out = original(*args, **kwargs)
            self.batches.append(out.tolist())
            return out

        for name, module in list(sys.modules.items()):
            if name.startswith("rlhflab") and getattr(module, "sample_responses", None) is original:
                monkeypatch.setattr(module, "sample_responses", recording)


def _without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def _replace_paths(value, paths: dict[str, str]):
    if isinstance(value, str):
        for path, name in paths.items():
            value = value.replace(path, name)
        return value
    if isinstance(value, dict):
        return {k: _replace_paths(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_paths(v, paths) for v in value]
    return value


def _weight_fingerprint(folder: Path) -> dict:
    from safetensors.torch import load_file

    total, squares = 0.0, 0.0
    for f in sorted(folder.glob("*.safetensors")):
        for t in load_file(f).values():
            t = t.double()
            total += float(t.sum())
            squares += float((t * t).sum())
    return {"sum": total, "sum_of_squares": squares}


def record_run(folder: Path, batches: SampledBatches, paths: dict[str, str]) -> dict:
    from rlhflab.store.cards import read_model_card, read_policy_metadata
    from rlhflab.store.jsonio import read_jsonl

    card = read_model_card(folder) or ""
    out = {
        "metrics": [_without_timings(r) for r in read_jsonl(folder / "metrics.jsonl")],
        "overopt": [_without_timings(r) for r in read_jsonl(folder / "overopt.jsonl")]
        if (folder / "overopt.jsonl").is_file() else [],
        "card_block": read_policy_metadata(folder),
        "card_headings": [line for line in card.splitlines() if line.startswith("#")],
        "files": sorted(p.name for p in folder.iterdir()),
        "sampled_token_ids": batches.batches,
        "weights": _weight_fingerprint(folder),
    }
    return _replace_paths(out, paths)


# ---------------------------------------------------------------- comparing
def assert_close(got, want, where: str = "") -> None:
    if isinstance(want, float) or isinstance(got, float):
        if want is None or got is None:
            assert got == want, where
            return
        if math.isnan(want):
            assert math.isnan(got), f"{where}: {got} != nan"
            return
        atol = ATOL_BY_KEY.get(where.rsplit(".", 1)[-1], ATOL)
        assert got == pytest.approx(want, rel=RTOL, abs=atol), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def check_golden(name: str, got: dict) -> None:
    path = GOLDEN_DIR / f"{name}.json"
    got = json.loads(json.dumps(got))  # the same types a stored file gives back (tuples as lists)
    if REGENERATE or not path.is_file():
        if not REGENERATE:
            pytest.fail(f"no golden file {path}; record it with RLHFLAB_REGENERATE_GOLDEN=1")
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1) + "\n", encoding="utf-8")
        return
    assert_close(got, json.loads(path.read_text(encoding="utf-8")), name)


# ---------------------------------------------------------------- the runs
@pytest.fixture
def paths(tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file):
    return {str(tiny_llama_dir): "<tiny-llama>", str(tiny_reward_dir): "<tiny-reward>", str(prompts_file): "<prompts>",
            str(tmp_path): "<tmp>"}


# The goldens pin the training arithmetic on the inputs they were recorded with, before the demo profile asked its
# prompts with a system message (which changes every input token, not the arithmetic).
NO_SYSTEM = None


def _seeded():
    torch.manual_seed(0)


def test_sft_golden(tmp_path, monkeypatch, tiny_llama_dir, paths):
    from rlhflab.config import SFTConfig, build_config
    from rlhflab.training.sft import train_sft

    rows = [hh_row([f"Question number {i}: what is the answer?"], "The answer is forty two.", f"No idea ({i}).")
            for i in range(40)]
    data = str(write_jsonl(tmp_path / "pairs.jsonl", rows))
    paths[data] = "<pairs>"
    cfg = build_config(SFTConfig, "demo", mode="full", base_model=str(tiny_llama_dir), dataset=data, train_size=12,
                       epochs=1, batch_size=4, lr=3e-3, max_length=64, bf16=False, output_dir=str(tmp_path / "sft"),
                       system_prompt=NO_SYSTEM)
    batches = SampledBatches(monkeypatch)
    _seeded()
    check_golden("sft", record_run(train_sft(cfg), batches, paths))


def test_dpo_golden(tmp_path, monkeypatch, tiny_llama_dir, paths):
    from rlhflab.config import DPOConfig, build_config
    from rlhflab.training.dpo import train_dpo

    rows = [hh_row([f"Question number {i}: can you help me?"], "Happy to help, here it is.", "No.")
            for i in range(40)]
    data = str(write_jsonl(tmp_path / "pairs.jsonl", rows))
    paths[data] = "<pairs>"
    cfg = build_config(DPOConfig, "demo", mode="full", base_model=str(tiny_llama_dir), dataset=data, train_size=12,
                       epochs=1, batch_size=4, lr=1e-3, max_length=64, bf16=False, output_dir=str(tmp_path / "dpo"),
                       system_prompt=NO_SYSTEM)
    batches = SampledBatches(monkeypatch)
    _seeded()
    check_golden("dpo", record_run(train_dpo(cfg), batches, paths))


def test_ppo_full_golden(tmp_path, monkeypatch, tiny_llama_dir, tiny_reward_dir, prompts_file, paths):
    from rlhflab.training.ppo import train_ppo

    cfg = tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, probe_every=2, probe_prompts=2,
                   system_prompt=NO_SYSTEM)
    batches = SampledBatches(monkeypatch)
    _seeded()
    check_golden("ppo_full", record_run(train_ppo(cfg), batches, paths))


def test_grpo_golden(tmp_path, monkeypatch, tiny_llama_dir, tiny_reward_dir, prompts_file, paths):
    from rlhflab.config import GRPOConfig, build_config
    from rlhflab.training.grpo import train_grpo

    cfg = build_config(GRPOConfig, "demo", mode="full", base_model=str(tiny_llama_dir),
                       reward_model=str(tiny_reward_dir), dataset=prompts_file, lang=None, num_prompts=16,
                       num_heldout=4, batch_size=2, num_generations=2, epochs=1, max_prompt_length=64,
                       max_response_length=8, lr=1e-3, lora_lr=None, max_steps=2, bf16=False, kl_horizon=100,
                       probe_every=2, probe_prompts=2, output_dir=str(tmp_path / "grpo"), judge_model="",
                       probe_max_new_tokens=None, system_prompt=NO_SYSTEM)
    batches = SampledBatches(monkeypatch)
    _seeded()
    check_golden("grpo", record_run(train_grpo(cfg), batches, paths))
