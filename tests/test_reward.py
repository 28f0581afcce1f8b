"""Reward-model training with tiny models: losses, learning, best-checkpoint selection, resume, TRL shape."""
import json

import pytest
import torch

from conftest import hh_row, write_jsonl
from rlhflab.config import build_config, RewardConfig
from rlhflab.errors import UserError
from rlhflab.models import load_reward_model
from rlhflab.reward_training import evaluate_reward_model, pairwise_loss, train_reward_model
from rlhflab.data.hh_rlhf import load_pairs
from rlhflab.scoring import preference_probability, score_responses

GOOD = ["Sure, here is a clear answer with the steps you need.", "Happy to help: the answer is yes.",
        "Great question, the short answer is forty two.", "Yes, you can do that safely at home."]
BAD = ["You are stupid and I will not tell you anything at all.", "Go away, stupid question.",
       "No. Stupid. Figure it out yourself, I refuse.", "What a stupid thing to ask, no."]


def content_separable_rows(n: int):
    """Chosen is polite, rejected insults the user; lengths overlap, so only content separates them."""
    rows = []
    for i in range(n):
        rows.append(hh_row([f"Question number {i}: can you help me?"], GOOD[i % 4], BAD[(i + 1) % 4]))
    return rows


def test_losses_match_hand_computed_values():
    rc, rr = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.5, 0.5, 1.0])
    # ranking, margin 1: max(0, 1 - 0.5) = 0.5, max(0, 1 - 0) = 1, max(0, 1 + 2) = 3 -> mean 1.5
    assert pairwise_loss(rc, rr, "ranking", 1.0).item() == pytest.approx(1.5)
    assert pairwise_loss(rc, rr, "ranking", 0.0).item() == pytest.approx(2.0 / 3)
    # Bradley-Terry: -log sigmoid(d) = log(1 + e^-d)
    import math
    expected = sum(math.log(1 + math.exp(-d)) for d in (0.5, 0.0, -2.0)) / 3
    assert pairwise_loss(rc, rr, "bradley-terry").item() == pytest.approx(expected, rel=1e-6)
    assert preference_probability(1.0, 1.0) == 0.5
    assert preference_probability(2.0, 0.0) == pytest.approx(1 / (1 + math.exp(-2)))


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    return str(write_jsonl(tmp_path_factory.mktemp("toy") / "pairs.jsonl", content_separable_rows(60)))


@pytest.fixture(scope="module")
def trained_reward(tmp_path_factory, tiny_llama_dir, toy_dataset):
    out = tmp_path_factory.mktemp("rm") / "reward"
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=toy_dataset, train_size=48,
                       val_size=12, epochs=3, batch_size=8, lr=2e-3, max_length=64, freeze_layers=0,
                       output_dir=str(out), bf16=False)
    return train_reward_model(cfg), cfg


def test_loss_falls_and_accuracy_rises(trained_reward, tiny_llama_dir, toy_dataset):
    path, cfg = trained_reward
    history = json.loads((path / "log_history.json").read_text())
    train_losses = [h["loss"] for h in history if "loss" in h]
    assert train_losses[-1] < train_losses[0]
    ev = json.loads((path / "reward_eval.json").read_text())
    # An untrained head on the same backbone, for the "accuracy rises" comparison.
    from rlhflab.reward_training import build_reward_model
    torch.manual_seed(0)
    untrained, tok = build_reward_model(str(tiny_llama_dir))
    pairs = load_pairs(toy_dataset).pairs[:12]
    before = evaluate_reward_model(untrained, tok, pairs, 64)["accuracy"][0]
    assert ev["accuracy"][0] >= 0.9 > before or ev["accuracy"][0] > before + 0.3
    assert ev["n_pairs"] == 12 and len(ev["accuracy"]) == 3 and ev["accuracy"][1] <= ev["accuracy"][0]


def test_best_validation_checkpoint_is_kept(trained_reward):
    path, _ = trained_reward
    ev = json.loads((path / "reward_eval.json").read_text())
    losses = {h["epoch"]: h["eval_loss"] for h in ev["eval_history"]}
    assert ev["best_epoch"] == min(losses, key=losses.get)
    card = (path / "README.md").read_text()
    assert "Held-out evaluation" in card and "longer wins" in card and "%" in card


def test_saved_model_is_a_trl_compatible_reward_model(trained_reward):
    path, _ = trained_reward
    model, tok = load_reward_model(str(path))
    assert model.config.num_labels == 1 and type(model).__name__.endswith("ForSequenceClassification")
    # TRL's get_reward reads the score head over the backbone at the last non-pad token.
    from trl.experimental.utils import get_reward
    prompt = tok("Hello", add_special_tokens=False, return_tensors="pt")["input_ids"]
    batch = torch.cat([torch.full((1, 2), tok.pad_token_id), prompt], 1)
    _, score, _ = get_reward(model, batch, tok.pad_token_id, 1)
    assert score.shape == (1,)
    scores = score_responses(model, tok, ["Q?", "Q?"], [GOOD[0], BAD[0]])
    assert scores[0] > scores[1]


def test_resume_continues_from_saved_step(tmp_path, tiny_llama_dir, toy_dataset):
    out = tmp_path / "reward"
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=toy_dataset, train_size=48,
                       val_size=12, epochs=2, batch_size=8, lr=1e-3, max_length=64, freeze_layers=0,
                       output_dir=str(out), bf16=False)
    work = train_reward_model(cfg, interrupt_after_epochs=1)
    saved = sorted(work.glob("checkpoint-*"))
    assert [p.name for p in saved] == ["checkpoint-6"] and not out.exists()
    cfg.resume = True
    train_reward_model(cfg)
    history = json.loads((out / "log_history.json").read_text())
    epochs = [h["epoch"] for h in history if "eval_loss" in h]
    assert epochs == [1.0, 2.0]  # epoch 1 was not trained again
    assert max(h["step"] for h in history) == 12


def test_bad_dataset_stops_with_one_sentence(tmp_path, tiny_llama_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json at all\n")
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=str(bad),
                       output_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match="bad.jsonl"):
        train_reward_model(cfg)


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    import subprocess, sys
    from conftest import ROOT
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "reward.py"), "--profile", "demo", "--dataset",
                           str(empty), "--output-dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "empty.jsonl is empty" in proc.stderr


def test_cached_frozen_blocks_give_the_same_rewards_as_the_whole_model(tiny_llama_dir):
    """FrozenPrefix: lower blocks once per sequence + upper blocks on their outputs == the whole model."""
    from rlhflab.reward_training import CachedPairDataset, FrozenPrefix, PairDataset, _collate_cached, build_reward_model
    from rlhflab.scoring import left_pad, reward_forward
    from rlhflab.data.hh_rlhf import parse_rows

    torch.manual_seed(0)
    model, tok = build_reward_model(str(tiny_llama_dir))
    model.eval()
    pairs = parse_rows(content_separable_rows(6)).pairs
    plain = PairDataset(pairs, tok, 64)
    seqs = [it[k] for it in plain.items for k in ("chosen_ids", "rejected_ids")]
    assert len({len(s) for s in seqs}) > 1  # different lengths, so left padding is exercised
    ids, mask = left_pad(seqs, tok.pad_token_id)
    with torch.no_grad():
        expected = reward_forward(model, ids, mask)
        assert FrozenPrefix.applies(model, 1)
        prefix = FrozenPrefix(model, 1)
        cached = CachedPairDataset(plain, prefix, tok.pad_token_id)
        prefix.train_upper_blocks()
        assert len(model.model.layers) == 1
        batch = _collate_cached(cached.items)  # chosen of every pair, then rejected
        got = model(**batch).logits.squeeze(-1)
        prefix.restore()
    assert len(model.model.layers) == 2
    order = [2 * i for i in range(6)] + [2 * i + 1 for i in range(6)]
    torch.testing.assert_close(got, expected[order], rtol=1e-4, atol=1e-5)


def test_training_on_cached_frozen_blocks_saves_the_whole_model(tmp_path, tiny_llama_dir, toy_dataset, capsys):
    out = tmp_path / "reward"
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=toy_dataset, train_size=48,
                       val_size=12, epochs=2, batch_size=8, lr=2e-3, max_length=64, freeze_layers=1,
                       output_dir=str(out), bf16=False)
    train_reward_model(cfg)
    assert "frozen blocks 1-1 run once per sequence" in capsys.readouterr().out
    from safetensors.torch import load_file
    saved = load_file(out / "model.safetensors")
    base = load_file(tiny_llama_dir / "model.safetensors")
    # both blocks are in the checkpoint, the frozen one and the embeddings untouched, the upper one trained
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        torch.testing.assert_close(saved[key], base[key], rtol=0, atol=0)
    assert not torch.equal(saved["model.layers.1.self_attn.q_proj.weight"], base["model.layers.1.self_attn.q_proj.weight"])
    history = json.loads((out / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    ev = json.loads((out / "reward_eval.json").read_text())
    assert ev["accuracy"][0] > 0.6  # measured on text through the whole reloaded model


def test_evaluating_the_saved_checkpoint_repeats_the_training_runs_evaluation(trained_reward, toy_dataset, tmp_path,
                                                                              capsys):
    """eval/reward_model.py's function picks the same held-out pairs from the seed and gets the same accuracy."""
    from rlhflab.config import RewardEvalConfig
    from rlhflab.reward_training import evaluate_reward_checkpoint

    path, cfg = trained_reward
    out = evaluate_reward_checkpoint(build_config(RewardEvalConfig, "demo", reward_model=str(path), dataset=toy_dataset,
                                                  val_size=12, seed=cfg.seed, output=str(tmp_path / "ev.json")))
    ev, saved = json.loads(out.read_text()), json.loads((path / "reward_eval.json").read_text())
    assert ev["n_pairs"] == 12 and ev["accuracy"] == pytest.approx(saved["accuracy"])
    assert "| metric (95 % Wilson interval) |" in capsys.readouterr().out
