"""Reward-model training with tiny models: losses, learning, best-checkpoint selection, resume, TRL shape, the saved
train/dev/test split, and the independent judge evaluated on the reward model's test pairs."""
import json

import pytest
import torch
from conftest import hh_row, write_jsonl

from rlhflab.config import JUDGE_DIR, RewardConfig, RewardEvalConfig, build_config
from rlhflab.data.hh_rlhf import SPLIT_FILE, pairs_by_id
from rlhflab.errors import UserError
from rlhflab.measure.scoring import preference_probability, score_responses
from rlhflab.models.loading import load_reward_model
from rlhflab.training.reward import evaluate_reward_checkpoint, evaluate_reward_model, pairwise_loss, train_reward_model

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
    return str(write_jsonl(tmp_path_factory.mktemp("toy") / "pairs.jsonl", content_separable_rows(100)))


# 100 pairs: 12 shared test pairs; with the judge's share at 0.4 the policy side holds 53 (the reward model trains on
# 40, 6 pick its epoch) and the judge side 35 (29 train, 6 dev)
SIZES = dict(train_size=40, dev_size=6, test_size=12, judge_share=0.4, max_length=64, bf16=False)


@pytest.fixture(scope="module")
def trained_reward(tmp_path_factory, tiny_llama_dir, toy_dataset):
    out = tmp_path_factory.mktemp("rm") / "reward"
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=toy_dataset, epochs=3,
                       batch_size=8, lr=2e-3, freeze_layers=0, output_dir=str(out), **SIZES)
    return train_reward_model(cfg), cfg


def test_loss_falls_and_accuracy_rises(trained_reward, tiny_llama_dir, toy_dataset):
    path, cfg = trained_reward
    history = json.loads((path / "log_history.json").read_text())
    train_losses = [h["loss"] for h in history if "loss" in h]
    assert train_losses[-1] < train_losses[0]
    ev = json.loads((path / "reward_eval.json").read_text())
    # An untrained head on the same backbone, for the "accuracy rises" comparison.
    from rlhflab.training.reward import build_reward_model
    torch.manual_seed(0)
    untrained, tok = build_reward_model(str(tiny_llama_dir))
    test = pairs_by_id(toy_dataset, json.loads((path / SPLIT_FILE).read_text())["ids"]["test"])
    before = evaluate_reward_model(untrained, tok, test, 64)["accuracy"][0]
    assert ev["accuracy"][0] >= 0.9 > before or ev["accuracy"][0] > before + 0.3
    assert ev["n_pairs"] == 12 and len(ev["accuracy"]) == 3 and ev["accuracy"][1] <= ev["accuracy"][0]
    assert ev["part"] == "test" and ev["train_pairs"] == 40


def test_best_dev_checkpoint_is_kept_and_dev_accuracy_is_reported_apart(trained_reward):
    path, _ = trained_reward
    ev = json.loads((path / "reward_eval.json").read_text())
    losses = {h["epoch"]: h["eval_loss"] for h in ev["eval_history"]}
    assert ev["best_epoch"] == min(losses, key=losses.get)
    best = min(ev["eval_history"], key=lambda h: h["eval_loss"])
    assert ev["dev"]["n_pairs"] == 6 and ev["dev"]["loss"] == best["eval_loss"]
    assert 0 <= ev["dev"]["accuracy"][1] <= ev["dev"]["accuracy"][0] and "not held out" in ev["dev"]["note"]
    card = (path / "README.md").read_text()
    assert "Held-out evaluation" in card and "longer wins" in card and "%" in card
    assert "Data split" in card and "picks the epoch" in card and "12 test pairs, never used to train" in card
    assert "Published anchors" not in card and "61–67" not in card  # no unsourced figures


def test_split_json_names_disjoint_parts_that_the_training_used(trained_reward, toy_dataset):
    path, cfg = trained_reward
    split = json.loads((path / SPLIT_FILE).read_text())
    assert split["dataset"] == toy_dataset and split["role"] == "reward" and split["side"] == "policy"
    assert split["seed"] == 42 and split["judge_share"] == 0.4
    assert split["sizes"] == {"train": 40, "dev": 6, "test": 12}
    ids = {part: set(v) for part, v in split["ids"].items()}
    assert {part: len(v) for part, v in ids.items()} == split["sizes"]
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    prompts = {part: {p.prompt for p in pairs_by_id(toy_dataset, split["ids"][part])} for part in ids}
    assert not prompts["train"] & prompts["test"] and not prompts["dev"] & prompts["test"]


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
    # batched by length, returned in the order given: each score is the pair's scored alone
    prompts, answers = ["Q?", "A longer question, with more words in it?", "Hm?", "Q?"], [*GOOD[:2], *BAD[:2]]
    alone = [score_responses(model, tok, [p], [a])[0] for p, a in zip(prompts, answers)]
    assert score_responses(model, tok, prompts, answers, batch_size=2) == pytest.approx(alone, abs=1e-4)
    # the same answer to the same prompt, wherever it sits among others, scores exactly the same: a tie stays a tie
    scores = score_responses(model, tok, [*prompts, "Q?"], [*answers, GOOD[0]], batch_size=2)
    assert scores[0] == scores[-1]


def test_resume_continues_from_saved_step(tmp_path, tiny_llama_dir, toy_dataset):
    out = tmp_path / "reward"
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=toy_dataset, epochs=2,
                       batch_size=8, lr=1e-3, freeze_layers=0, output_dir=str(out), **SIZES)
    work = train_reward_model(cfg, interrupt_after_epochs=1)
    saved = sorted(work.glob("checkpoint-*"))
    assert [p.name for p in saved] == ["checkpoint-5"] and not out.exists()  # 40 pairs / batch 8
    cfg.resume = True
    train_reward_model(cfg)
    history = json.loads((out / "log_history.json").read_text())
    epochs = [h["epoch"] for h in history if "eval_loss" in h]
    assert epochs == [1.0, 2.0]  # epoch 1 was not trained again
    assert max(h["step"] for h in history) == 10


def test_bad_dataset_stops_with_one_sentence(tmp_path, tiny_llama_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json at all\n")
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=str(bad),
                       output_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match="bad.jsonl"):
        train_reward_model(cfg)


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "reward.py"), "--profile", "demo", "--dataset",
                           str(empty), "--output-dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "empty.jsonl is empty" in proc.stderr


def test_cached_frozen_blocks_give_the_same_rewards_as_the_whole_model(tiny_llama_dir):
    """FrozenPrefix: lower blocks once per sequence + upper blocks on their outputs == the whole model."""
    from rlhflab.data.hh_rlhf import parse_rows
    from rlhflab.measure.scoring import left_pad, reward_forward
    from rlhflab.training.reward import (
        CachedPairDataset,
        FrozenPrefix,
        PairDataset,
        _collate_cached,
        build_reward_model,
    )

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
    cfg = build_config(RewardConfig, "demo", base_model=str(tiny_llama_dir), dataset=toy_dataset, epochs=2,
                       batch_size=8, lr=2e-3, freeze_layers=1, output_dir=str(out), **SIZES)
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


def test_evaluating_the_saved_checkpoint_uses_exactly_its_test_pairs(trained_reward, tmp_path, capsys):
    """eval/reward_model.py's function reads split.json (no dataset, seed or sizes given) and repeats the training
    run's test accuracy on the same 12 pairs; the training run's dev results stay in the file."""
    path, _ = trained_reward
    saved = json.loads((path / "reward_eval.json").read_text())
    out = evaluate_reward_checkpoint(build_config(RewardEvalConfig, "demo", reward_model=str(path),
                                                  output=str(tmp_path / "ev.json")))
    ev = json.loads(out.read_text())
    assert ev["n_pairs"] == 12 and ev["accuracy"] == pytest.approx(saved["accuracy"])
    assert ev["chosen_rewards"] == pytest.approx(saved["chosen_rewards"], abs=1e-3)
    printed = capsys.readouterr().out
    assert "| metric (95 % interval, method named per row) |" in printed
    assert "'longer response wins' baseline (equal lengths count half; bootstrap interval over pairs)" in printed
    assert f"12 test pairs of {saved['dataset']}" in printed


def test_evaluation_refuses_a_dataset_without_the_test_pairs_or_a_checkpoint_without_a_split(
        trained_reward, toy_dataset, tiny_reward_dir, tmp_path):
    path, _ = trained_reward
    first_test = pairs_by_id(toy_dataset, json.loads((path / SPLIT_FILE).read_text())["ids"]["test"])[0]
    rows = [r for r in content_separable_rows(100) if not r["chosen"].startswith(first_test.prompt)]
    tampered = str(write_jsonl(tmp_path / "tampered.jsonl", rows))
    with pytest.raises(UserError, match=r"tampered.jsonl no longer holds 1 of the 12 test pairs"):
        evaluate_reward_checkpoint(build_config(RewardEvalConfig, "demo", reward_model=str(path), dataset=tampered,
                                                output=str(tmp_path / "ev.json")))
    with pytest.raises(UserError, match=r"has no split.json .* pass --dataset"):
        evaluate_reward_checkpoint(build_config(RewardEvalConfig, "demo", reward_model=str(tiny_reward_dir)))
    # with --dataset, a checkpoint without a split is evaluated on that dataset's (seed-free) test part
    out = evaluate_reward_checkpoint(build_config(RewardEvalConfig, "demo", reward_model=str(tiny_reward_dir),
                                                  dataset=toy_dataset, test_size=12, output=str(tmp_path / "o.json")))
    assert json.loads(out.read_text())["n_pairs"] == 12


def test_the_judge_trains_on_the_other_side_and_is_compared_on_the_same_test_pairs(
        trained_reward, tiny_gpt2_dir, toy_dataset, tmp_path, capsys):
    """The judge may be another architecture than the reward model (here GPT-2-style against Llama-style)."""
    defaults = build_config(RewardConfig, "demo", role="judge")
    reward_defaults = build_config(RewardConfig, "demo")
    assert defaults.output_dir == str(JUDGE_DIR) and JUDGE_DIR.name == "judge"
    assert defaults.seed != reward_defaults.seed and defaults.train_size > reward_defaults.train_size

    rm_path, _ = trained_reward
    cfg = build_config(RewardConfig, "demo", role="judge", base_model=str(tiny_gpt2_dir), dataset=toy_dataset,
                       epochs=1, batch_size=8, lr=2e-3, freeze_layers=0, output_dir=str(tmp_path / "judge"),
                       **{**SIZES, "train_size": None})
    judge_path = train_reward_model(cfg)
    judge_split = json.loads((judge_path / SPLIT_FILE).read_text())
    rm_split = json.loads((rm_path / SPLIT_FILE).read_text())
    assert judge_split["role"] == "judge" and judge_split["side"] == "judge" and judge_split["seed"] == cfg.seed
    assert judge_split["ids"]["test"] == rm_split["ids"]["test"]  # one test part for both, whatever the seed
    trained = lambda s: set(s["ids"]["train"]) | set(s["ids"]["dev"])  # noqa: E731
    assert not trained(judge_split) & trained(rm_split)
    card = (judge_path / "README.md").read_text()
    assert "Independent judge" in card and "never used to train" in card
    capsys.readouterr()

    out = evaluate_reward_checkpoint(build_config(RewardEvalConfig, "demo", reward_model=str(rm_path),
                                                  judge_model=str(judge_path), output=str(tmp_path / "both.json")))
    comparison = json.loads(out.read_text())["same_pairs_comparison"]
    assert comparison["n_pairs"] == 12 and comparison["judge_eval"]["n_pairs"] == 12
    assert comparison["independence"] == {"shared_training_pairs": 0, "judge_training_pairs_in_test": 0,
                                          "same_dataset": True}
    rm_correct = json.loads(out.read_text())["correct"]
    judge_correct = comparison["judge_eval"]["correct"]
    diff = comparison["differences"]["judge - reward model"]
    assert diff["accuracy_difference"][0] == pytest.approx((sum(judge_correct) - sum(rm_correct)) / 12)
    assert diff["accuracy_difference"][1] <= diff["accuracy_difference"][0] <= diff["accuracy_difference"][2]
    assert diff["only_this_right"] - diff["only_first_right"] == sum(judge_correct) - sum(rm_correct)
    printed = capsys.readouterr().out
    assert "the same test pairs, both models" in printed and "| judge |" in printed
    assert "| difference judge - reward model |" in printed and "warning" not in printed


def test_eval_cli_without_a_split_says_what_to_do(tiny_reward_dir):
    import subprocess
    import sys

    from conftest import ROOT
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "reward_model.py"), "--profile", "demo",
                           "--reward-model", str(tiny_reward_dir)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "has no split.json" in proc.stderr and "--dataset" in proc.stderr
