"""Scale-out: reward, PPO and GRPO training under `torchrun --nproc_per_node 2` (gloo on CPU) with tiny models."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, hh_row, write_jsonl

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _torchrun(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1",
           "MASTER_ADDR": "127.0.0.1",
           # the two ranks are CPU processes (gloo) also on a GPU machine: on one GPU, NCCL refuses two ranks
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29533", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed in this environment")
def test_two_process_reward_and_ppo(tmp_path, tiny_llama_dir, prompts_file, full_run):
    rows = [hh_row([f"Question {i}?"], "A kind, correct answer.", "Go away, stupid.") for i in range(160)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    reward_out = tmp_path / "reward"
    proc = _torchrun([str(ROOT / "training" / "reward.py"), "--profile", "demo", "--base-model", str(tiny_llama_dir),
                      "--dataset", str(data), "--train-size", "32", "--dev-size", "8", "--test-size", "8", "--epochs", "1",
                      "--batch-size", "4", "--max-length", "48", "--freeze-layers", "0", "--no-bf16",
                      "--output-dir", str(reward_out)], tmp_path)
    history = json.loads((reward_out / "log_history.json").read_text())
    # 32 pairs, 4 per process, 2 processes -> 4 optimizer steps in one epoch (8 on one process)
    assert max(h["step"] for h in history) == 4
    assert (reward_out / "model.safetensors").is_file() and (reward_out / "README.md").is_file()

    ppo_out = tmp_path / "ppo-full"
    _torchrun([str(ROOT / "training" / "ppo.py"), "--mode", "full", "--profile", "demo",
               "--base-model", str(tiny_llama_dir), "--reward-model", str(reward_out), "--dataset", prompts_file,
               "--num-prompts", "16", "--num-heldout", "4", "--batch-size", "4", "--mini-batch-size", "2",
               "--ppo-epochs", "1", "--max-prompt-length", "64", "--max-response-length", "8", "--max-steps", "2",
               "--no-bf16", "--output-dir", str(ppo_out)], tmp_path)
    metrics = [json.loads(l) for l in (ppo_out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[-1]["episode"] == 8
    single = {p.name for p in full_run.iterdir()}
    assert {p.name for p in ppo_out.iterdir()} == single


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed in this environment")
def test_two_process_grpo(tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file):
    out = tmp_path / "grpo"
    _torchrun([str(ROOT / "training" / "grpo.py"), "--mode", "full", "--profile", "demo",
               "--base-model", str(tiny_llama_dir), "--reward-model", str(tiny_reward_dir), "--dataset", prompts_file,
               "--num-prompts", "16", "--num-heldout", "4", "--batch-size", "2", "--num-generations", "2",
               "--max-prompt-length", "64", "--max-response-length", "8", "--max-steps", "2", "--no-bf16",
               "--output-dir", str(out)], tmp_path)
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # 2 prompts x 2 responses per step, 2 on each process; KL is the mean over both processes' tokens
    assert [m["step"] for m in metrics] == [1, 2] and metrics[-1]["episode"] == 8
    assert abs(metrics[0]["kl_per_token"]) < 1e-3 and len(metrics[0]["rollout_scores"]) == 2
    assert metrics[1]["kl_coef"] == metrics[0]["kl_coef_next"] != metrics[0]["kl_coef"]
    assert {"model.safetensors", "README.md", "policy_info.json", "heldout_prompts.jsonl"} <= {p.name for p in out.iterdir()}
