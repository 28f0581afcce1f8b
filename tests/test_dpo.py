"""DPO with tiny models: preference accuracy rises on a separable set, the logged KL to the reference is exact and 0
at the first step, checkpoints reload and say what they are, --init-from starts from an SFT checkpoint, a bad
dataset stops with one sentence, an interrupted run resumes to the configured step."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, hh_row, write_jsonl
from test_sft import InterruptAfterSave

from rlhflab.config import DPOConfig, SFTConfig, build_config
from rlhflab.data.hh_rlhf import load_pairs
from rlhflab.errors import UserError
from rlhflab.models.loading import load_policy
from rlhflab.store.cards import read_policy_metadata
from rlhflab.store.jsonio import read_jsonl
from rlhflab.training.dpo import build_dpo_trainer, train_dpo
from rlhflab.training.sft import train_sft

CHOSEN = "Happy to help: here is a clear and careful answer."
REJECTED = "No. Figure it out yourself, I will not help."
FIELDS = {"step", "epoch", "loss", "reward_margin", "preference_accuracy", "logp_chosen", "logp_rejected",
          "kl_per_token", "kl_estimator", "lr", "seconds_per_step"}


@pytest.fixture(scope="module")
def dpo_data(tmp_path_factory):
    """Separable: the chosen response is always one sentence, the rejected always another. 96 pairs: DPO draws from
    the policy side only (36 of them, hh_rlhf.policy_pairs), and needs 32."""
    rows = [hh_row([f"Question number {i}: can you help me?"], CHOSEN, REJECTED) for i in range(96)]
    return str(write_jsonl(tmp_path_factory.mktemp("dpo-data") / "pairs.jsonl", rows))


def dpo_cfg(tmp_path, base, data, mode="full", **kw):
    values = dict(mode=mode, base_model=str(base), dataset=data, train_size=32, epochs=1, batch_size=4, lr=1e-3,
                  lora_lr=1e-2, max_length=64, bf16=False, output_dir=str(tmp_path / f"dpo-{mode}"))
    values.update(kw)
    return build_config(DPOConfig, "demo", **values)


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory, tiny_llama_dir, dpo_data):
    runs = {}
    for mode in ("full", "lora"):
        cfg = dpo_cfg(tmp_path_factory.mktemp(f"dpo-{mode}"), tiny_llama_dir, dpo_data, mode)
        runs[mode] = train_dpo(cfg), cfg
    return runs


@pytest.fixture(params=["full", "lora"])
def dpo_run(request, dpo_runs):
    return dpo_runs[request.param]


def test_preference_accuracy_rises_and_every_record_has_the_fields(dpo_run):
    out, cfg = dpo_run
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))  # 32 pairs / batch 4
    for r in records:
        assert FIELDS <= set(r) and r["kl_estimator"] == "exact"
    first, last = records[0], records[-3:]
    # the first step sees the reference itself: KL 0, margins 0, accuracy 0 (ties count wrong)
    assert abs(first["kl_per_token"]) < 1e-6 and abs(first["reward_margin"]) < 1e-6
    assert sum(r["preference_accuracy"] for r in last) / 3 > 0.75
    assert sum(r["reward_margin"] for r in last) / 3 > 0.05
    assert all(r["kl_per_token"] >= 0 for r in records) and records[-1]["kl_per_token"] > 0
    assert records[-1]["logp_chosen"] - records[-1]["logp_rejected"] > first["logp_chosen"] - first["logp_rejected"]


def test_checkpoint_reloads_and_its_card_says_dpo(dpo_run):
    out, cfg = dpo_run
    meta = read_policy_metadata(out)
    assert meta["kind"] == "policy" and meta["method"] == "dpo" and meta["mode"] == cfg.mode
    model, _ = load_policy(str(out))
    assert type(model).__name__.startswith("Peft") == (cfg.mode == "lora")
    card = (out / "README.md").read_text()
    assert "β = 0.1" in card and "preference accuracy" in card and "KL to the reference" in card
    assert "embedded stand-in data" in card and "trainable" in card
    info = json.loads((out / "policy_info.json").read_text())
    assert info["beta"] == 0.1 and info["kl_estimator"] == "exact" and info["steps"] == 8


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_logged_kl_is_the_exact_kl_to_the_reference(tmp_path, tiny_llama_dir, dpo_data, mode):
    """The KL the trainer logs for a batch equals KL(policy ‖ reference) computed here from separate forwards."""
    cfg = dpo_cfg(tmp_path, tiny_llama_dir, dpo_data, mode)
    trainer, _ = build_dpo_trainer(cfg, load_pairs(dpo_data).pairs[:8], tmp_path / "work")
    model = trainer.model
    torch.manual_seed(0)
    with torch.no_grad():
        # sharp next-token distributions (a tiny random model's are near uniform, where KL is nearly symmetric)
        for m in (model.get_base_model() if mode == "lora" else model, trainer.ref_model):
            if m is not None:
                m.model.norm.weight.mul_(30)
        for name, p in model.named_parameters():  # move the policy away from its reference
            if p.requires_grad and (mode == "full" or "lora_B" in name):
                p.add_(torch.randn_like(p) * (0.05 if mode == "full" else 0.5))
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    with torch.no_grad():
        trainer.compute_loss(model, batch)
        logged = trainer._kl_sum / trainer._kl_tokens
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        policy_logits = model(**kwargs).logits
        if mode == "full":
            ref_logits = trainer.ref_model(**kwargs).logits
        else:
            with model.disable_adapter():
                ref_logits = model(**kwargs).logits
    half = batch["input_ids"].shape[0] // 2
    at = batch["completion_mask"][:half, 1:].bool()
    lp = F.log_softmax(policy_logits[:half, :-1][at], -1)
    lq = F.log_softmax(ref_logits[:half, :-1][at], -1)
    expected = F.kl_div(lq, lp, log_target=True, reduction="sum").item() / at.sum().item()  # KL(p ‖ q)
    reverse = F.kl_div(lp, lq, log_target=True, reduction="sum").item() / at.sum().item()  # KL(q ‖ p)
    assert expected > 1e-3 and abs(expected - reverse) > 0.01 * expected  # the direction is tested, not just a value
    assert logged == pytest.approx(expected, rel=1e-4)


def test_models_without_a_chat_template_get_plain_text_pairs(tmp_path, tiny_gpt2_dir, dpo_data):
    trainer, _ = build_dpo_trainer(dpo_cfg(tmp_path, tiny_gpt2_dir, dpo_data), load_pairs(dpo_data).pairs[:4],
                                   tmp_path / "work")
    tok, row = trainer.processing_class, trainer.train_dataset[0]
    assert tok.decode(row["prompt_ids"]).endswith("\n\nAssistant:")
    assert tok.decode(row["chosen_ids"]) == " " + CHOSEN + tok.eos_token
    assert tok.decode(row["rejected_ids"]) == " " + REJECTED + tok.eos_token


def test_init_from_an_sft_checkpoint_starts_dpo_there(tmp_path, tiny_llama_dir, dpo_data, dpo_runs):
    sft_cfg = build_config(SFTConfig, "demo", base_model=str(tiny_llama_dir), dataset=dpo_data, train_size=24,
                           epochs=1, batch_size=4, lr=3e-3, max_length=64, bf16=False, output_dir=str(tmp_path / "sft"))
    sft = train_sft(sft_cfg)
    cfg = dpo_cfg(tmp_path, tiny_llama_dir, dpo_data, "lora", init_from=str(sft), max_steps=2)
    out = train_dpo(cfg)
    meta = read_policy_metadata(out)
    assert meta["method"] == "dpo" and meta["init_from"] == str(sft) and meta["base_model"] == str(tiny_llama_dir)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft)
    model, _ = load_policy(str(out))  # the adapter loads onto the SFT policy it was trained from
    first = read_jsonl(out / "metrics.jsonl")[0]
    from_base = read_jsonl(dpo_runs["lora"][0] / "metrics.jsonl")[0]
    assert abs(first["kl_per_token"]) < 1e-6  # the reference is the SFT policy itself
    # SFT learned the chosen sentence, so at step 1 it is far likelier than under the base model
    assert first["logp_chosen"] > from_base["logp_chosen"] + 5


def test_bad_dataset_stops_with_one_sentence_and_writes_nothing(tmp_path, tiny_llama_dir):
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "hi", "good": "hello", "bad": "go away"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for bad, message in ((wrong, "no 'chosen'/'rejected' fields"), (empty, "empty")):
        with pytest.raises(UserError, match=message):
            train_dpo(dpo_cfg(tmp_path, tiny_llama_dir, str(bad)))
    assert not (tmp_path / "dpo-full").exists() and not (tmp_path / ".dpo-full-work").exists()


def test_interrupted_run_resumes_to_the_same_step_count(tmp_path, tiny_llama_dir, dpo_data):
    cfg = dpo_cfg(tmp_path, tiny_llama_dir, dpo_data, train_size=24)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(cfg, callbacks=[InterruptAfterSave(2)])
    work = tmp_path / ".dpo-full-work"
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-2"] and not (tmp_path / "dpo-full").exists()
    cfg.resume = True
    out = train_dpo(cfg)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 7))
    assert json.loads((out / "policy_info.json").read_text())["steps"] == 6


def test_cli_help_and_bad_input(tmp_path):
    help_run = subprocess.run([sys.executable, str(ROOT / "training" / "dpo.py"), "--help"], capture_output=True,
                              text=True)
    assert help_run.returncode == 0 and "--beta" in help_run.stdout and "--init-from" in help_run.stdout
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"text": "hello"}])
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "dpo.py"), "--profile", "demo", "--dataset",
                           str(wrong), "--output-dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "wrong.jsonl" in proc.stderr
    assert not (tmp_path / "o").exists()
