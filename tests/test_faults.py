"""Faults, end to end: training killed mid-run (Ctrl-C, SIGKILL) and resumed to the configured end, a disk that
fills up during a save, corrupt or mismatched checkpoint files, and Hub pushes without a token or a network.

Each case checks that nothing already saved is lost and that the user gets one sentence saying what to do.
The kill tests run the real CLIs as subprocesses on tiny models and data (about 10 s of imports each).
"""
from __future__ import annotations

import errno
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, hh_row, write_jsonl

from rlhflab.errors import UserError
from rlhflab.store.checkpoints import recover_interrupted_save, save_atomically
from rlhflab.store.hub import push_folder, report_push
from rlhflab.store.jsonio import read_jsonl

INTERRUPTED = "interrupted: re-run the same command with --resume to continue from the last saved state."


# ---------------------------------------------------------------- running a CLI and killing it


class Run:
    """A training script run as a user runs it: its own process, output to files (no pipe to fill up)."""

    def __init__(self, tmp: Path, name: str, script: str, args: list[str], env: dict | None = None):
        self.name = name
        self.stdout_path, self.stderr_path = tmp / f"{name}.stdout", tmp / f"{name}.stderr"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # Ctrl-C must reach the script even when the test runner itself was started in the background
            # (`cmd &` in a script ignores SIGINT, and children inherit that): restore the default first.
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "training" / script), *args], stdout=out,
                                         stderr=err, env={k: v for k, v in env.items() if v is not None}, cwd=tmp,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tail(self) -> str:
        return f"--- {self.name} stdout:\n{self.stdout[-2000:]}\n--- {self.name} stderr:\n{self.stderr[-3000:]}"

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"{self.name} did not finish in {timeout} s\n{self.tail()}")

    def signal_when(self, ready, sig: int, timeout: float = 300) -> int:
        """Send `sig` as soon as ready() holds (polled every 50 ms); returns the exit status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    break
            except (OSError, ValueError, KeyError):  # a file read while being written
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} ended (status {self.proc.returncode}) before the moment to interrupt it\n"
                            f"{self.tail()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"{self.name}: no save to interrupt after within {timeout} s\n{self.tail()}")
            time.sleep(0.05)
        self.proc.send_signal(sig)
        return self.wait()

    def assert_interrupted_by_ctrl_c(self, status: int) -> None:
        assert status == 130, self.tail()
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert INTERRUPTED in lines[-3:], self.tail()  # the last thing printed (a progress bar may redraw once)
        assert "Traceback" not in self.stderr, self.tail()

    def steps_printed(self, pattern_prefix: str) -> list[int]:
        """The N of every stdout line starting `<prefix>N/` (e.g. 'step 3/10: ...')."""
        out = []
        for line in self.stdout.replace("\r", "\n").splitlines():
            at = line.find(pattern_prefix)
            if at >= 0 and "/" in line[at:]:
                head = line[at + len(pattern_prefix):].split("/", 1)[0]
                if head.isdigit():
                    out.append(int(head))
        return out


@pytest.fixture
def cli(tmp_path):
    started: list[Run] = []

    def start(name, script, args, env=None) -> Run:
        run = Run(tmp_path, name, script, args, env)
        started.append(run)
        return run

    yield start
    for run in started:  # a failed assertion must not leave a training process behind
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. killed mid-run, resumed


def test_reward_training_killed_by_ctrl_c_and_sigkill_resumes_to_the_configured_step(tmp_path, cli, tiny_llama_dir):
    from transformers import AutoModelForSequenceClassification

    from rlhflab.models.loading import load_reward_model

    data = write_jsonl(tmp_path / "hh.jsonl", [hh_row([f"Question {i}: can you help me?"], f"Sure, here is answer {i}.",
                                                       f"No, go away {i}.") for i in range(320)])
    out, work = tmp_path / "reward", tmp_path / ".reward-trainer"
    epochs, steps_per_epoch = 5, 64 // 8
    args = ["--base-model", str(tiny_llama_dir), "--dataset", str(data), "--train-size", "64", "--dev-size", "8",
            "--test-size", "8", "--epochs", str(epochs), "--batch-size", "8", "--max-length", "32", "--lr", "1e-3",
            "--no-bf16", "--output-dir", str(out)]

    def saved_steps() -> list[int]:  # complete Trainer checkpoints: trainer_state.json is written last
        return sorted(read_json(p / "trainer_state.json")["global_step"] for p in work.glob("checkpoint-*")
                      if (p / "trainer_state.json").is_file())

    def assert_saved_state_loads(step: int) -> None:
        model = AutoModelForSequenceClassification.from_pretrained(work / f"checkpoint-{step}")
        assert model.config.num_labels == 1 and not out.exists()

    run = cli("reward-1", "reward.py", args)
    run.assert_interrupted_by_ctrl_c(run.signal_when(lambda: saved_steps(), signal.SIGINT))
    first = max(saved_steps())
    assert first % steps_per_epoch == 0 and first < epochs * steps_per_epoch
    assert_saved_state_loads(first)

    run = cli("reward-2", "reward.py", args + ["--resume"])
    status = run.signal_when(lambda: max(saved_steps()) > first, signal.SIGKILL)
    assert status == -signal.SIGKILL, run.tail()
    assert f"--resume: continuing from {work / f'checkpoint-{first}'}" in run.stdout
    second = max(saved_steps())
    assert_saved_state_loads(second)
    # What a SIGKILL during the Trainer's next save leaves: a newer checkpoint folder without trainer_state.json.
    partial = work / f"checkpoint-{second + steps_per_epoch}"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes((work / f"checkpoint-{second}" / "model.safetensors").read_bytes()[:999])

    run = cli("reward-3", "reward.py", args + ["--resume"])
    assert run.wait() == 0, run.tail()
    assert f"--resume: continuing from {work / f'checkpoint-{second}'}" in run.stdout
    history = read_json(out / "log_history.json")
    assert [h["epoch"] for h in history if "eval_loss" in h] == [float(e) for e in range(1, epochs + 1)]
    assert max(h["step"] for h in history) == epochs * steps_per_epoch
    model, _ = load_reward_model(str(out))
    assert model.config.num_labels == 1


def test_ppo_killed_by_ctrl_c_and_sigkill_resumes_to_the_configured_step(tmp_path, cli, tiny_llama_dir,
                                                                           tiny_reward_dir, prompts_file):
    from rlhflab.models.loading import load_policy

    out, work = tmp_path / "ppo-full", tmp_path / ".ppo-full-work"
    steps = 10  # 16 prompts x 2 passes / rollout batch 2 = 16 steps, capped at 10; saved every 10 // 5 = 2 steps
    args = ["--mode", "full", "--base-model", str(tiny_llama_dir), "--reward-model", str(tiny_reward_dir),
            "--dataset", prompts_file, "--num-prompts", "16", "--num-heldout", "4", "--batch-size", "2",
            "--mini-batch-size", "2", "--ppo-epochs", "1", "--epochs", "2", "--max-prompt-length", "64",
            "--max-response-length", "4", "--lr", "1e-3", "--kl-horizon", "100", "--no-bf16",
            "--max-steps", str(steps), "--output-dir", str(out)]

    def saved_step() -> int:
        path = work / "saved" / "state.json"
        return read_json(path)["step"] if path.is_file() else 0

    def logged_past_the_save(after: int):  # a step was logged that the last save does not hold
        return lambda: saved_step() > after and max(r["step"] for r in read_jsonl(work / "metrics.jsonl")) > saved_step()

    def assert_saved_state_loads() -> None:
        policy, tokenizer = load_policy(str(work / "saved" / "policy"))
        assert tokenizer.padding_side == "left" and not out.exists()

    run = cli("ppo-1", "ppo.py", args)
    run.assert_interrupted_by_ctrl_c(run.signal_when(logged_past_the_save(0), signal.SIGINT))
    first = saved_step()
    assert first % 2 == 0 and 2 <= first < steps
    assert_saved_state_loads()

    run = cli("ppo-2", "ppo.py", args + ["--resume"])
    status = run.signal_when(logged_past_the_save(first), signal.SIGKILL)
    assert status == -signal.SIGKILL, run.tail()
    assert run.steps_printed("step ")[0] == first + 1  # continued after the saved step, not from step 1
    second = saved_step()
    assert_saved_state_loads()

    run = cli("ppo-3", "ppo.py", args + ["--resume"])
    assert run.wait() == 0, run.tail()
    assert run.steps_printed("step ") == list(range(second + 1, steps + 1))
    # steps logged after a save and run again after the kill appear once each
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, steps + 1))
    assert read_json(out / "ppo_info.json")["steps"] == steps
    load_policy(str(out))


def test_sft_killed_by_ctrl_c_and_sigkill_resumes_to_the_configured_step(tmp_path, cli, tiny_llama_dir):
    """The Trainer-based policy trainers (SFT here; DPO and GRPO share prepare_resume) under real signals."""
    from rlhflab.models.loading import load_policy

    rows = [hh_row([f"Question number {i}?"], f"A good answer {i}.", f"A bad answer {i}.") for i in range(80)]
    data = write_jsonl(tmp_path / "hh.jsonl", rows)
    out, work = tmp_path / "sft", tmp_path / ".sft-work"
    steps = 12  # 24 pairs / batch 2; a Trainer checkpoint every 12 / 4 = 3 steps
    args = ["--base-model", str(tiny_llama_dir), "--dataset", str(data), "--train-size", "24", "--batch-size", "2",
            "--epochs", "1", "--max-length", "64", "--lr", "1e-3", "--no-bf16", "--output-dir", str(out)]

    def saved_step() -> int:  # the newest complete Trainer checkpoint (trainer_state.json is written last)
        done = [read_json(p / "trainer_state.json")["global_step"] for p in work.glob("checkpoint-*")
                if (p / "trainer_state.json").is_file()]
        return max(done, default=0)

    def logged_past_the_save(after: int):
        return lambda: saved_step() > after and max(r["step"] for r in read_jsonl(work / "metrics.jsonl")) > saved_step()

    run = cli("sft-1", "sft.py", args)
    run.assert_interrupted_by_ctrl_c(run.signal_when(logged_past_the_save(0), signal.SIGINT))
    first = saved_step()
    assert 3 <= first < steps and not out.exists()

    run = cli("sft-2", "sft.py", args + ["--resume"])
    status = run.signal_when(logged_past_the_save(first), signal.SIGKILL)
    assert status == -signal.SIGKILL, run.tail()
    assert run.steps_printed("step ")[0] == first + 1  # continued after the saved step, not from step 1
    second = saved_step()

    run = cli("sft-3", "sft.py", args + ["--resume"])
    assert run.wait() == 0, run.tail()
    assert run.steps_printed("step ") == list(range(second + 1, steps + 1))
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, steps + 1))
    assert read_json(out / "policy_info.json")["steps"] == steps
    load_policy(str(out))


def test_dcgan_killed_by_ctrl_c_and_sigkill_resumes_to_the_configured_epoch_and_survives_a_failed_push(tmp_path, cli):
    from rlhflab.gan.data import write_chestmnist_npz
    from rlhflab.gan.networks import load_generator

    write_chestmnist_npz(tmp_path / "chestmnist.npz", n_train=1000, n_val=8, n_test=16, seed=1)
    out, epochs = tmp_path / "dcgan", 6
    args = ["--data-root", str(tmp_path), "--no-download", "--output-dir", str(out), "--epochs", str(epochs),
            "--batch-size", "50", "--generator-width", "8", "--discriminator-width", "8", "--sample-every", "1",
            "--save-every", "1", "--diagnostic-samples", "0", "--num-threads", "1", "--seed", "3"]

    def saved_epoch() -> int:
        path = out / "training_state" / "state.json"
        return read_json(path)["epoch"] if path.is_file() else 0

    def assert_checkpoint_loads(epoch: int) -> None:
        generator = load_generator(out)
        assert generator.config["epochs_trained"] == epoch == saved_epoch()
        assert [r["epoch"] for r in read_jsonl(out / "losses.jsonl")] == list(range(1, epoch + 1))

    run = cli("dcgan-1", "dcgan.py", args)
    run.assert_interrupted_by_ctrl_c(run.signal_when(lambda: saved_epoch() >= 1, signal.SIGINT))
    first = saved_epoch()
    assert 1 <= first < epochs
    assert_checkpoint_loads(first)

    run = cli("dcgan-2", "dcgan.py", args + ["--resume"])
    status = run.signal_when(lambda: saved_epoch() > first, signal.SIGKILL)
    assert status == -signal.SIGKILL, run.tail()
    assert f"resuming {out} after epoch {first}" in run.stdout
    second = saved_epoch()
    assert_checkpoint_loads(second)

    # The last run also pushes, with no token anywhere and the Hub endpoint on a closed local port.
    no_token = {"HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None, "HF_OIDC_RESOURCE": None, "HF_HUB_OFFLINE": "0",
                "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    run = cli("dcgan-3", "dcgan.py", args + ["--resume", "--push-to-hub", "me/dcgan"], env=no_token)
    assert run.wait() == 2, run.tail()
    assert f"resuming {out} after epoch {second}" in run.stdout
    assert run.steps_printed("epoch ") == list(range(second + 1, epochs + 1))
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: push to me/dcgan not attempted: no Hugging Face token found"), run.tail()
    assert "HF_TOKEN" in error and "`hf auth login`" in error and f"{out} is intact" in error
    assert_checkpoint_loads(epochs)


# ---------------------------------------------------------------- 2. the disk fills up during a save


@pytest.mark.parametrize("writer", ["python-file", "safetensors"])
def test_full_disk_during_a_save_keeps_the_previous_checkpoint_byte_identical(tmp_path, monkeypatch, writer):
    import safetensors.torch

    from rlhflab.gan.networks import Generator, load_generator, save_generator

    out = tmp_path / "dcgan"
    torch.manual_seed(0)
    save_atomically(out, lambda folder: save_generator(folder, Generator(width=8)))
    before = snapshot(out)

    if writer == "python-file":  # a real ENOSPC: the weights are written, then config.json hits a full device
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full on this system")

        def write(folder: Path):
            (folder / "config.json").symlink_to("/dev/full")
            save_generator(folder, Generator(width=8))
    else:  # safetensors reports a full disk as its own error type, with the OS message inside
        def save_file_until_full(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\0" * 64)  # the part that made it to disk
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(safetensors.torch, "save_file", save_file_until_full)

        def write(folder: Path):
            (folder / "README.md").write_text("card of the new checkpoint")
            save_generator(folder, Generator(width=8))

    with pytest.raises(UserError) as info:
        save_atomically(out, write)
    message = str(info.value)
    assert message.startswith(f"no space left on the disk while saving the checkpoint {out}")
    assert f"the previous checkpoint in {out} is untouched" in message and "free disk space" in message
    assert "\n" not in message
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcgan"]  # no half-written temporary folder left
    monkeypatch.undo()
    assert load_generator(out).latent_dim == 100


def test_full_disk_on_a_first_save_says_nothing_was_written(tmp_path):
    def write(folder: Path):
        (folder / "weights").write_bytes(b"w")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=f"no space left on the disk .* nothing was written to {re.escape(str(tmp_path / 'new'))}"):
        save_atomically(tmp_path / "new", write)
    assert list(tmp_path.iterdir()) == []


KILLED_SAVE = """
import os, signal, sys, time
from pathlib import Path
from rlhflab.store.checkpoints import save_atomically
out, when = Path(sys.argv[1]), sys.argv[2]
replace = os.replace

def replace_then_die(src, dst):  # the first rename (checkpoint -> .old) happens, the second never does
    replace(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)

def write(folder):
    (folder / "weights").write_text("new")
    if when == "writing":
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_die

save_atomically(out, write)
"""


@pytest.mark.parametrize("when", ["writing", "between-renames"])
def test_save_killed_part_way_is_tidied_and_the_checkpoint_survives(tmp_path, when):
    """SIGKILL while writing leaves a .tmp folder; between the renames, the checkpoint exists only as .old.
    The next save (or a pipeline / --resume start) removes the .tmp and puts the .old back."""
    out = tmp_path / "reward"
    out.mkdir()
    (out / "weights").write_text("old")
    script = tmp_path / "save.py"
    script.write_text(KILLED_SAVE.format(root=str(ROOT)))
    proc = subprocess.run([sys.executable, str(script), str(out), when], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".reward."))
    kinds = ["tmp"] if when == "writing" else ["old", "tmp"]  # between the renames the new one is whole too
    assert [re.fullmatch(r"\.reward\.(old|tmp)-\d+", name)[1] for name in leftovers] == kinds, leftovers
    assert out.exists() == (when == "writing")
    note = recover_interrupted_save(out)
    assert note and ("restored" in note) == (when == "between-renames")
    assert (out / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward", "save.py"]
    assert recover_interrupted_save(out) is None
    save_atomically(out, lambda folder: (folder / "weights").write_text("next"))
    assert (out / "weights").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward", "save.py"]


def test_a_save_still_running_elsewhere_is_left_alone(tmp_path):
    out = tmp_path / "ppo-full"
    busy = tmp_path / f".ppo-full.tmp-{os.getppid()}"  # a live process that is not this one
    busy.mkdir()
    assert recover_interrupted_save(out) is None and busy.is_dir()


# ---------------------------------------------------------------- 3. corrupt, missing or mismatched files


@pytest.fixture(scope="module")
def broken(tmp_path_factory, tiny_llama_dir, tiny_reward_dir) -> Path:
    """Checkpoint folders a user can end up with: truncated weights, no tokenizer, another model's config."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhflab.gan.networks import Generator, save_generator

    root = tmp_path_factory.mktemp("broken")

    def truncate(path: Path, keep: float = 0.5):
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])

    shutil.copytree(tiny_llama_dir, root / "policy-truncated")
    truncate(root / "policy-truncated" / "model.safetensors")
    shutil.copytree(tiny_llama_dir, root / "policy-no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / "policy-no-tokenizer" / name).unlink()
    shutil.copytree(tiny_reward_dir, root / "reward-truncated")
    truncate(root / "reward-truncated" / "model.safetensors", 0.9)
    shutil.copytree(tiny_reward_dir, root / "reward-no-tokenizer")
    (root / "reward-no-tokenizer" / "tokenizer.json").unlink()
    save_generator(root / "dcgan", Generator(width=8))
    shutil.copytree(root / "dcgan", root / "dcgan-truncated")
    truncate(root / "dcgan-truncated" / "model.safetensors")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(root / "lora-truncated")
    truncate(root / "lora-truncated" / "adapter_model.safetensors")
    return root


CASES = {  # id: (loader, folder, file the sentence must name, words it must contain)
    "policy-truncated-weights": ("policy", "policy-truncated", "model.safetensors", "corrupt or truncated"),
    "policy-missing-tokenizer": ("policy", "policy-no-tokenizer", "tokenizer.json", "is missing"),
    "policy-is-a-dcgan": ("policy", "dcgan", "config.json", "'dcgan-generator'"),
    "policy-is-a-reward-model": ("policy", "REWARD", "config.json", "describes a reward model"),
    "lora-truncated-adapter": ("policy", "lora-truncated", "adapter_model.safetensors", "corrupt or truncated"),
    "reward-truncated-weights": ("reward", "reward-truncated", "model.safetensors", "corrupt or truncated"),
    "reward-missing-tokenizer": ("reward", "reward-no-tokenizer", "tokenizer.json", "is missing"),
    "reward-is-a-causal-lm": ("reward", "LLAMA", "config.json", "not a reward model"),
    "reward-is-a-dcgan": ("reward", "dcgan", "config.json", "'dcgan-generator'"),
    "generator-truncated-weights": ("generator", "dcgan-truncated", "model.safetensors", "corrupt, truncated"),
    "generator-is-a-reward-model": ("generator", "REWARD", "config.json", "not a DCGAN generator config"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_checkpoint_stops_with_a_sentence_naming_the_file(case, broken, tiny_llama_dir, tiny_reward_dir):
    from rlhflab.gan.networks import load_generator
    from rlhflab.models.loading import load_policy, load_reward_model

    kind, name, filename, words = CASES[case]
    folder = {"REWARD": tiny_reward_dir, "LLAMA": tiny_llama_dir}.get(name, broken / name)
    loader = {"policy": load_policy, "reward": load_reward_model, "generator": load_generator}[kind]
    before = snapshot(Path(folder))
    with pytest.raises(UserError) as info:
        loader(str(folder))
    message = str(info.value)
    assert str(Path(folder) / filename) in message and words in message, message
    assert "\n" not in message
    assert snapshot(Path(folder)) == before  # loading never repairs or deletes anything


def test_truncated_adapter_in_the_app_names_the_file(broken, tiny_llama_dir):
    """The app's PolicySet attaches the adapter through the same function as load_policy, with the same sentence."""
    from rlhflab.models.policies import PolicySet

    folder = broken / "lora-truncated"
    with pytest.raises(UserError) as info:
        PolicySet(str(tiny_llama_dir), {"lora": str(folder)}).load("lora")
    message = str(info.value)
    assert str(folder / "adapter_model.safetensors") in message and "corrupt or truncated" in message, message


# ---------------------------------------------------------------- 4. pushing without a token or a network


class _Refuses401(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # the Hub's answer to a bad token
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_hub():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuses401)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("situation", ["no-token", "offline-mode", "no-network", "token-refused"])
def test_failed_push_keeps_the_checkpoint_and_says_what_to_do(situation, tmp_path, monkeypatch, refusing_hub):
    import huggingface_hub.constants as hub_constants
    from huggingface_hub import HfApi

    folder = tmp_path / "reward"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("card")
    before = snapshot(folder)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-login"))
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # never anything but this machine
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", situation == "offline-mode")
    secret = "hf_secret_never_printed"
    endpoint = refusing_hub if situation == "token-refused" else "http://127.0.0.1:9"
    api = HfApi(endpoint=endpoint, token=None if situation == "no-token" else secret)

    result = push_folder(folder, "me/reward", api=api)
    expected = {
        "no-token": "push to me/reward not attempted: no Hugging Face token found — set HF_TOKEN to a token with "
                    "write access or run `hf auth login`",
        "offline-mode": "— HF_HUB_OFFLINE is set: unset it (or set it to 0) to push",
        "no-network": "— the Hub could not be reached: check the network connection (and HF_ENDPOINT, if set)",
        "token-refused": "— the Hub refused the token (HTTP 401): set HF_TOKEN to a token with write access to the "
                         "repo or run `hf auth login`",
    }[situation]
    assert not result.ok
    assert expected in result.message, result.message
    assert result.message.endswith(f"; the local checkpoint {folder} is intact, so retry with the same --push-to-hub "
                                   f"once that is fixed.")
    assert secret not in result.message and "\n" not in result.message
    assert snapshot(folder) == before
    if situation == "no-token":  # the scripts' path: report_push builds its own client and raises the same sentence
        with pytest.raises(UserError) as info:
            report_push(folder, "me/reward")
        assert str(info.value) == result.message
        assert snapshot(folder) == before


@pytest.mark.parametrize("method, config", [("sft", "SFTConfig"), ("dpo", "DPOConfig"), ("grpo", "GRPOConfig")])
def test_new_trainers_push_through_the_same_path_and_keep_the_checkpoint(method, config, tmp_path, monkeypatch,
                                                                         tiny_llama_dir):
    """SFT, DPO and GRPO save and push through save_policy_checkpoint -> report_push, PPO's path: a failed push
    (no token here) is one sentence and the written checkpoint, card included, stays."""
    import huggingface_hub.constants as hub_constants

    from rlhflab import config as configs
    from rlhflab.models.loading import load_causal_lm, load_policy
    from rlhflab.store.cards import read_policy_metadata
    from rlhflab.training.policy import save_policy_checkpoint

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-login"))
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    out = tmp_path / method
    cfg = configs.build_config(getattr(configs, config), "demo", base_model=str(tiny_llama_dir), output_dir=str(out),
                               push_to_hub=f"me/{method}")
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    with pytest.raises(UserError, match=rf"push to me/{method} not attempted: no Hugging Face token.*is intact"):
        save_policy_checkpoint(out, model, tokenizer, cfg, method=method, start=str(tiny_llama_dir), info={},
                               title=f"{method} policy", sections={"What this is": "test"})
    assert read_policy_metadata(out)["method"] == method and (out / "README.md").is_file()
    load_policy(str(out))
