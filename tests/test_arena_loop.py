"""The whole loop on tiny models: battles in the app, votes (cast by this test, standing in for people; they exist
only inside it), export as a TRL preference dataset, DPO and a reward model trained on it through their command
lines, and a DPO policy that changed. Also: `evaluate --arena` writes the leaderboard into report.md and
results.json, and the TRL format loads beside hh-rlhf's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_app import make_client, running_app, write_tiny_checkpoints

from rlhflab import cli
from rlhflab.data.hh_rlhf import load_pairs, transcript_to_messages
from rlhflab.errors import UserError

PROMPTS = [f"Tell me one short fact about the number {i}." for i in range(24)]


@pytest.fixture(scope="module")
def voted(tmp_path_factory, tiny_llama_dir):
    """24 battles fought and voted through the app (A or B alternately, one tie), and the votes store's path."""
    root = write_tiny_checkpoints(tmp_path_factory.mktemp("loop"), tiny_llama_dir, kinds=("full", "lora", "eval"))
    env = {"RLHFLAB_CHECKPOINTS": str(root), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1"}
    with running_app(env) as (registry, url):
        c = make_client(url)
        for i, prompt in enumerate(PROMPTS):
            c.submit(prompt, api_name="/battle").result(timeout=120)
            c.predict(api_name="/vote_tie" if i == 0 else "/vote_a" if i % 2 else "/vote_b")
        return registry.votes_path(), root


def test_votes_export_train_dpo_and_a_reward_model_and_change_the_policy(voted, tmp_path, tiny_llama_dir):
    db, _ = voted
    data = tmp_path / "arena.jsonl"
    cli.evaluate(["--votes-db", str(db), "--export-votes", str(data)])
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(records) == len(PROMPTS) - 1, "the tie is left out"
    assert all(r["prompt"][0]["role"] == "user" and r["chosen"][0]["role"] == "assistant" for r in records)
    pairs = load_pairs(str(data)).pairs
    assert len(pairs) == len(records)
    assert transcript_to_messages(pairs[0].prompt) == records[0]["prompt"]

    out = cli.train_dpo(["--profile", "demo", "--base-model", str(tiny_llama_dir), "--dataset", str(data),
                         "--train-size", "16", "--epochs", "1", "--batch-size", "2", "--lr", "1e-3",
                         "--max-length", "96", "--no-bf16", "--output-dir", str(tmp_path / "dpo")])
    from rlhflab.models.loading import load_policy

    trained, _ = load_policy(str(out), torch.float32)
    base, _ = load_policy(str(tiny_llama_dir), torch.float32)
    changed = max((p - q).abs().max().item() for p, q in zip(trained.state_dict().values(),
                                                             base.state_dict().values()))
    assert changed > 1e-4, "DPO on the people's votes changed the policy"
    assert "preference pairs" in (Path(out) / "README.md").read_text()

    rm = cli.train_reward(["--profile", "demo", "--base-model", str(tiny_llama_dir), "--dataset", str(data),
                           "--epochs", "1", "--batch-size", "4", "--dev-size", "1", "--test-size", "2",
                           "--max-length", "96", "--freeze-layers", "0", "--no-bf16",
                           "--output-dir", str(tmp_path / "reward")])
    assert (Path(rm) / "split.json").is_file()


def test_evaluate_arena_writes_the_leaderboard_into_report_and_results(voted):
    db, root = voted
    out = root / "eval"
    cli.evaluate(["--votes-db", str(db), "--arena", "--output-dir", str(out)])
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert report.startswith("# Evaluation report"), "the evaluation's own report is kept"
    assert report.count("## Arena: how people rank the policies") == 1 and "score (Elo)" in report
    assert results["arena"]["battles"] == len(PROMPTS) and "policies" in results
    cli.evaluate(["--votes-db", str(db), "--arena", "--output-dir", str(out)])  # re-run: replaced, not appended
    assert (out / "report.md").read_text().count("## Arena") == 1


def test_exporting_with_no_votes_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.evaluate(["--votes-db", str(tmp_path / "none.sqlite"), "--export-votes", str(tmp_path / "x.jsonl")])
    assert info.value.code == 2


@pytest.mark.parametrize("row, ok", [
    ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}, True),
    ({"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
      "rejected": [{"role": "assistant", "content": "Go away."}]}, True),
    ({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                 {"role": "user", "content": "c"}], "chosen": "d", "rejected": "e"}, True),
    ({"prompt": [{"role": "assistant", "content": "Hi"}], "chosen": "x", "rejected": "y"}, False),
    ({"prompt": "Hi?", "chosen": "same", "rejected": "same"}, False),
])
def test_trl_preference_rows_load_as_pairs(tmp_path, row, ok):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    if ok:
        [pair] = load_pairs(str(path)).pairs
        assert pair.prompt.endswith("\n\nAssistant:") and transcript_to_messages(pair.prompt)[-1]["role"] == "user"
    else:
        with pytest.raises(UserError, match="no usable preference pairs"):
            load_pairs(str(path))
