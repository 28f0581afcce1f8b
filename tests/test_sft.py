"""SFT with tiny models: the loss falls, prompt tokens carry no loss, full and LoRA checkpoints reload and say what
they are, a bad dataset stops with one sentence, an interrupted run resumes to the configured step."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT, hh_row, write_jsonl
from transformers import AutoTokenizer, TrainerCallback

from rlhflab.config import SFTConfig, build_config
from rlhflab.data.hh_rlhf import load_pairs
from rlhflab.errors import UserError
from rlhflab.models.loading import load_policy, load_tokenizer
from rlhflab.models.prompts import format_prompt, with_system
from rlhflab.store.cards import read_policy_metadata
from rlhflab.store.jsonio import read_jsonl
from rlhflab.training.sft import build_sft_trainer, train_sft

ANSWER = "The answer is always forty two, my friend."


def repetitive_rows(n: int):
    """Every chosen response is the same sentence: a tiny model learns it within a few steps."""
    return [hh_row([f"Question number {i}: what is the answer?"], ANSWER, f"I do not know, sorry ({i}).")
            for i in range(n)]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    # 80 pairs: SFT draws from the policy side only (31 of them, hh_rlhf.policy_pairs), and needs 24
    return str(write_jsonl(tmp_path_factory.mktemp("sft-data") / "pairs.jsonl", repetitive_rows(80)))


def sft_cfg(tmp_path, base, data, mode="full", **kw):
    values = dict(mode=mode, base_model=str(base), dataset=data, train_size=24, epochs=1, batch_size=4, lr=3e-3,
                  lora_lr=1e-2, max_length=64, bf16=False, output_dir=str(tmp_path / f"sft-{mode}"))
    values.update(kw)
    return build_config(SFTConfig, "demo", **values)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_llama_dir, sft_data):
    runs = {}
    for mode in ("full", "lora"):
        cfg = sft_cfg(tmp_path_factory.mktemp(f"sft-{mode}"), tiny_llama_dir, sft_data, mode)
        runs[mode] = train_sft(cfg), cfg
    return runs


@pytest.fixture(params=["full", "lora"])
def sft_run(request, sft_runs):
    return sft_runs[request.param]


def test_loss_falls_and_every_step_is_logged(sft_run):
    out, cfg = sft_run
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))  # 24 examples / batch 4, one epoch
    for r in records:
        assert {"loss", "mean_token_accuracy", "entropy_per_token", "epoch", "lr", "seconds_per_step"} <= set(r)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["epoch"] == pytest.approx(1.0)


def test_checkpoint_reloads_and_its_card_says_sft(sft_run, tiny_llama_dir):
    out, cfg = sft_run
    meta = read_policy_metadata(out)
    assert meta["kind"] == "policy" and meta["method"] == "sft" and meta["mode"] == cfg.mode
    assert ((out / "adapter_config.json").is_file()) == (cfg.mode == "lora")
    model, tok = load_policy(str(out))
    assert type(model).__name__.startswith("Peft") == (cfg.mode == "lora")
    # the saved tokenizer keeps the pad token rlhflab.models.loading chose (one that never occurs inside a prompt)
    assert AutoTokenizer.from_pretrained(out).pad_token == load_tokenizer(tiny_llama_dir).pad_token
    card = (out / "README.md").read_text()
    assert "embedded stand-in data" in card and "not Anthropic/hh-rlhf" in card  # the demo profile's data
    assert "Training result" in card and "trainable" in card and "loss on response tokens" in card
    info = json.loads((out / "policy_info.json").read_text())
    assert info["steps"] == 6 and info["summary"]["last"]["loss"] < info["summary"]["first"]["loss"]


def test_lora_checkpoint_holds_only_a_trained_adapter(sft_runs):
    out, _ = sft_runs["lora"]
    from safetensors.torch import load_file

    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # the adapter learned something


def test_prompt_tokens_carry_no_loss(tmp_path, tiny_model_dir, sft_data):
    """Labels are -100 on every prompt token and equal the input ids on the response, in the collated batch too; the
    prompt is asked with the profile's system message, as the evaluation asks it."""
    cfg = sft_cfg(tmp_path, tiny_model_dir, sft_data)
    assert cfg.system_prompt
    trainer, _ = build_sft_trainer(cfg, load_pairs(sft_data).pairs[:4], tmp_path / "work")
    tok = trainer.processing_class
    assert tok.padding_side == "left"  # TRL pads its batches itself; the tokenizer saved stays as prepared
    pair = load_pairs(sft_data).pairs[0]
    prompt_ids = tok(format_prompt(tok, with_system(pair.messages, cfg.system_prompt)),
                     add_special_tokens=False)["input_ids"]
    row = trainer.train_dataset[0]
    if getattr(tok, "chat_template", None):  # the plain Human:/Assistant: template has no place for a system message
        assert cfg.system_prompt in tok.decode(row["input_ids"][:len(prompt_ids)])
    ids, labels = row["input_ids"], row["labels"]
    assert ids[:len(prompt_ids)] == prompt_ids
    assert all(label == -100 for label in labels[:len(prompt_ids)])
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):] and len(ids) > len(prompt_ids)
    assert ANSWER in tok.decode(ids[len(prompt_ids):])
    batch = next(iter(trainer.get_train_dataloader()))
    for ids_row, label_row, mask_row in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        real = ids_row[mask_row.bool()].tolist()
        trained = label_row[label_row != -100].tolist()
        assert real[-len(trained):] == trained  # only the end of each sequence (the response) is trained
        assert len(trained) < len(real)


def test_bad_dataset_stops_with_one_sentence_and_writes_nothing(tmp_path, tiny_llama_dir):
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "hi", "response": "hello"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for bad, message in ((wrong, "no 'chosen'/'rejected' fields"), (empty, "empty")):
        cfg = sft_cfg(tmp_path, tiny_llama_dir, str(bad))
        with pytest.raises(UserError, match=message):
            train_sft(cfg)
    assert not (tmp_path / "sft-full").exists() and not (tmp_path / ".sft-full-work").exists()


def test_prompts_longer_than_max_length_stop_with_one_sentence(tmp_path, tiny_llama_dir):
    rows = [hh_row(["word " * 80 + f"question {i}"], ANSWER, "no") for i in range(6)]
    cfg = sft_cfg(tmp_path, tiny_llama_dir, str(write_jsonl(tmp_path / "long.jsonl", rows)), max_length=32)
    with pytest.raises(UserError, match="raise --max-length"):
        train_sft(cfg)
    assert not (tmp_path / "sft-full").exists() and not (tmp_path / ".sft-full-work").exists()


class InterruptAfterSave(TrainerCallback):
    """Ctrl-C right after the Trainer saved the state of step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kw):
        if state.global_step >= self.step:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_step_count(tmp_path, tiny_llama_dir, sft_data, sft_runs):
    cfg = sft_cfg(tmp_path, tiny_llama_dir, sft_data)
    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg, callbacks=[InterruptAfterSave(2)])
    work = tmp_path / ".sft-full-work"
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-2"] and not (tmp_path / "sft-full").exists()
    assert [r["step"] for r in read_jsonl(work / "metrics.jsonl")] == [1, 2]
    cfg.resume = True
    out = train_sft(cfg)
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))  # each step logged once, none trained twice
    assert json.loads((out / "policy_info.json").read_text())["steps"] == 6
    uninterrupted = read_jsonl(sft_runs["full"][0] / "metrics.jsonl")  # the same run without the interruption
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in uninterrupted], rel=1e-4)


def test_cli_help_and_bad_input(tmp_path):
    help_run = subprocess.run([sys.executable, str(ROOT / "training" / "sft.py"), "--help"], capture_output=True,
                              text=True)
    assert help_run.returncode == 0 and "--mode" in help_run.stdout and "--report-to" in help_run.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "sft.py"), "--profile", "demo", "--dataset",
                           str(empty), "--output-dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "empty.jsonl is empty" in proc.stderr


def test_card_windows_are_whole_passes_when_the_run_made_two():
    from rlhflab.training.policy import window_means

    two_passes = [{"epoch": e, "loss": loss} for e, loss in ((0.5, 4.0), (1.0, 2.0), (1.5, 3.0), (2.0, 1.0))]
    columns, first, last = window_means(two_passes, ["loss"])
    assert columns == ["first pass (2 steps)", "last pass (2 steps)"]
    assert (first, last) == ({"loss": 3.0}, {"loss": 2.0})
    one_pass = [{"epoch": (i + 1) / 8, "loss": float(i)} for i in range(8)]
    columns, first, last = window_means(one_pass, ["loss"])
    assert columns == ["first 2 steps", "last 2 steps"] and (first, last) == ({"loss": 0.5}, {"loss": 6.5})
