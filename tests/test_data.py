"""Parsers on real-format rows, malformed ones included, and the embedded demo data."""
import json

import pytest
from conftest import hh_row, write_jsonl

from rlhflab.config import DEMO_DATA_DIR
from rlhflab.data import hh_rlhf, oasst1
from rlhflab.errors import DatasetUnavailable, UserError


def test_hh_split_multi_turn_prompt():
    row = hh_row(["Hi", "Hello, how can I help?", "What is 2+2?"], "It is 4.", "It is 5.")
    pairs = hh_rlhf.parse_rows([row])
    assert pairs.num_skipped == 0
    pair = pairs.pairs[0]
    assert pair.prompt == "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: What is 2+2?\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == ("It is 4.", "It is 5.")
    assert pair.messages == [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello, how can I help?"},
                             {"role": "user", "content": "What is 2+2?"}]


def test_hh_malformed_rows_are_skipped_and_counted():
    good = hh_row(["Q?"], "good", "bad")
    rows = [
        good,
        {"chosen": "no assistant tag here", "rejected": "nor here"},
        hh_row(["Q?"], "same", "same"),
        hh_row(["Q?"], "", "bad"),
        {"chosen": good["chosen"], "rejected": "\n\nHuman: other?\n\nAssistant: x"},
        {"text": "wrong columns"},
        {"chosen": None, "rejected": 3},
    ]
    pairs = hh_rlhf.parse_rows(rows)
    assert len(pairs.pairs) == 1
    assert pairs.skipped == {"no assistant turn": 1, "identical responses": 1, "empty response": 1,
                             "prompts differ": 1, "missing chosen/rejected": 1, "not text": 1}
    assert pairs.num_skipped == 6


def test_hh_bad_files_give_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        hh_rlhf.load_pairs(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        hh_rlhf.load_pairs(str(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"chosen": "x"\n')
    with pytest.raises(UserError, match="not valid JSON"):
        hh_rlhf.load_pairs(str(broken))
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"text": "hi", "role": "prompter"}])
    with pytest.raises(UserError, match="not in hh-rlhf format"):
        hh_rlhf.load_pairs(str(wrong))
    useless = write_jsonl(tmp_path / "useless.jsonl", [hh_row(["Q"], "a", "a")])
    with pytest.raises(UserError, match="no usable preference pairs"):
        hh_rlhf.load_pairs(str(useless))


def test_hub_dataset_offline_suggests_demo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match="--profile demo"):
        hh_rlhf.load_pairs("Anthropic/hh-rlhf")


def _split_rows(n_prompts: int = 150):
    """Pairs over n_prompts prompts, every third prompt with a second pair (so a prompt can hold several)."""
    rows = []
    for i in range(n_prompts):
        rows.append(hh_row([f"question {i}?"], f"good {i}", f"bad {i}"))
        if i % 3 == 0:
            rows.append(hh_row([f"question {i}?"], f"also good {i}", f"also bad {i}"))
    return rows


def _parts(split) -> dict[str, list]:
    return {name: getattr(split, name).pairs for name in ("test", "policy_train", "policy_dev", "judge_train",
                                                        "judge_dev")}


def _ids(pairs) -> set[str]:
    return {hh_rlhf.pair_id(p) for p in pairs}


def test_preference_split_is_disjoint_by_prompt_deterministic_and_gives_the_judge_more(tmp_path):
    path = str(write_jsonl(tmp_path / "pairs.jsonl", _split_rows()))
    split = hh_rlhf.preference_split(path, seed=1, dev_size=10, test_size=20)
    parts = _parts(split)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes["test"] == 20 and sizes["policy_dev"] == sizes["judge_dev"] == 10
    assert sum(sizes.values()) + split.dropped == 200  # every pair is in one part, or dropped for a shared prompt
    prompts = {k: {p.prompt for p in v} for k, v in parts.items()}
    names = list(prompts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not prompts[a] & prompts[b], f"{a} and {b} share a prompt"
    assert len(split.judge_side) > len(split.policy_side)  # the judge gets the larger share (0.6 by default)
    assert all(hh_rlhf.prompt_side(p.prompt) == "judge" for p in split.judge_side)
    # the same call gives the same parts, pair for pair
    again = hh_rlhf.preference_split(path, seed=1, dev_size=10, test_size=20)
    assert {k: [hh_rlhf.pair_id(p) for p in v] for k, v in _parts(again).items()} == \
        {k: [hh_rlhf.pair_id(p) for p in v] for k, v in parts.items()}
    # another seed or other train/dev sizes move pairs between train and dev, never between sides or out of test
    other = hh_rlhf.preference_split(path, seed=7, dev_size=5, test_size=20, train_size=30, judge_train_size=40)
    assert _ids(other.test.pairs) == _ids(split.test.pairs)
    assert _ids(other.judge_side) <= _ids(split.judge_side) and _ids(other.policy_side) <= _ids(split.policy_side)
    assert len(other.policy_train.pairs) == 30 and len(other.judge_train.pairs) == 40
    assert _ids(other.policy_dev.pairs) != _ids(split.policy_dev.pairs)
    # a different test size changes the test part only: a pair's side is fixed by its prompt
    bigger = hh_rlhf.preference_split(path, seed=1, dev_size=10, test_size=30)
    assert _ids(split.test.pairs) < _ids(bigger.test.pairs)
    assert not _ids(bigger.judge_side) & _ids(split.policy_side)
    # the judge's share is configurable
    small_judge = hh_rlhf.preference_split(path, seed=1, dev_size=10, test_size=20, judge_share=0.3)
    assert len(small_judge.judge_side) < len(small_judge.policy_side)
    with pytest.raises(UserError, match="judge_share"):
        hh_rlhf.preference_split(path, seed=1, dev_size=10, test_size=20, judge_share=1.0)


def test_split_record_names_each_part_by_id_and_reads_back(tmp_path):
    path = str(write_jsonl(tmp_path / "pairs.jsonl", _split_rows()))
    split = hh_rlhf.preference_split(path, seed=3, dev_size=8, test_size=16)
    record = split.record("judge")
    assert record["role"] == "judge" and record["side"] == "judge" and record["judge_share"] == 0.6
    assert record["sizes"] == {"train": len(split.judge_train.pairs), "dev": 8, "test": 16}
    assert len(set(record["ids"]["train"]) | set(record["ids"]["dev"]) | set(record["ids"]["test"])) == \
        sum(record["sizes"].values())
    back = hh_rlhf.pairs_by_id(path, record["ids"]["test"])
    assert back == split.test.pairs
    rows = [r for r in _split_rows() if f"good {split.test.pairs[0].prompt.split()[2][:-1]}" not in r["chosen"]]
    tampered = str(write_jsonl(tmp_path / "tampered.jsonl", rows))
    with pytest.raises(UserError, match=r"no longer holds 1 of the 16 test pairs"):
        hh_rlhf.pairs_by_id(tampered, record["ids"]["test"])


def test_the_hub_test_part_comes_from_the_test_split(monkeypatch):
    rows = {"train": _split_rows(100), "test": [hh_row([f"held-out {i}?"], f"fine {i}", f"rude {i}")
                                                for i in range(30)] + [hh_row(["question 6?"], "x", "y")]}
    monkeypatch.setattr(hh_rlhf, "load_hub_rows", lambda repo, split: rows[split])
    split = hh_rlhf.preference_split("someone/prefs", seed=0, dev_size=5, test_size=31)
    assert len(split.test.pairs) == 31 and {p.chosen for p in split.test.pairs} >= {f"fine {i}" for i in range(30)}
    # the training split's two pairs whose prompt is also a test prompt are left out of both sides
    assert all(p.prompt != "\n\nHuman: question 6?\n\nAssistant:" for p in split.policy_side + split.judge_side)
    assert split.dropped >= 2 and len(split.policy_side) + len(split.judge_side) + split.dropped == 134


def test_sft_and_dpo_train_only_on_the_policy_side(tmp_path, monkeypatch):
    """What SFT and DPO hand their trainers never shares a pair (or a prompt) with the judge side or the test part."""
    from rlhflab.config import DPOConfig, SFTConfig, build_config
    from rlhflab.training import dpo, sft

    path = str(write_jsonl(tmp_path / "pairs.jsonl", _split_rows()))
    split = hh_rlhf.preference_split(path, seed=0, dev_size=10, test_size=hh_rlhf.DEFAULT_TEST_SIZE)
    judge_prompts = {p.prompt for p in split.judge_side} | {p.prompt for p in split.test.pairs}
    seen = []

    class Stop(Exception):
        pass

    def capture(cfg, pairs, work, callbacks=None):
        seen.append(pairs)
        raise Stop

    monkeypatch.setattr(sft, "build_sft_trainer", capture)
    monkeypatch.setattr(dpo, "build_dpo_trainer", capture)
    for seed in (0, 1, 2):
        for module, cls, train in ((sft, SFTConfig, sft.train_sft), (dpo, DPOConfig, dpo.train_dpo)):
            cfg = build_config(cls, "demo", dataset=path, train_size=1000, seed=seed, output_dir=str(tmp_path / "o"))
            with pytest.raises(Stop):
                train(cfg)
    assert len(seen) == 6 and all(seen)
    for pairs in seen:
        assert not {p.prompt for p in pairs} & judge_prompts
        assert {p.prompt for p in pairs} <= {p.prompt for p in split.policy_side}
    assert len(seen[0]) == len(split.policy_side)  # 1000 asked: the whole policy side, no more


def test_the_demo_sizes_leave_each_reward_model_enough_pairs():
    from rlhflab.config import RewardConfig, build_config
    from rlhflab.training.reward import split_for

    parts = {role: split_for(build_config(RewardConfig, "demo", role=role)).role_parts(role) for role in ("reward", "judge")}
    (rm_train, rm_dev), (judge_train, judge_dev) = parts["reward"], parts["judge"]
    assert len(rm_train.pairs) >= 80 and len(rm_dev.pairs) == len(judge_dev.pairs) == 20
    assert len(judge_train.pairs) > len(rm_train.pairs)
    assert not _ids(rm_train.pairs + rm_dev.pairs) & _ids(judge_train.pairs + judge_dev.pairs)


def _oasst_row(i, text, role="prompter", lang="en", deleted=False, parent=None):
    return {"message_id": f"m{i}", "parent_id": parent, "user_id": "u", "created_date": "2023-02-05T14:23:11+00:00",
            "text": text, "role": role, "lang": lang, "review_count": 3, "review_result": True,
            "deleted": deleted, "rank": None if role == "prompter" else 0, "synthetic": False, "model_name": None,
            "detoxify": None, "message_tree_id": f"m{i}", "tree_state": "ready_for_export", "emojis": None,
            "labels": None}


def test_oasst_keeps_prompters_dedups_and_filters_language():
    rows = [_oasst_row(1, "How do I bake bread?"), _oasst_row(2, "Knead it.", role="assistant", parent="m1"),
            _oasst_row(3, "How do I bake  bread?"), _oasst_row(4, "Wie spät ist es?", lang="de"),
            _oasst_row(5, "Deleted one", deleted=True), _oasst_row(6, "What is a prime?")]
    assert oasst1.prompter_texts(rows) == ["How do I bake bread?", "Wie spät ist es?", "What is a prime?"]
    assert oasst1.prompter_texts(rows, lang="en") == ["How do I bake bread?", "What is a prime?"]


def test_oasst_split_disjoint_and_heldout_independent_of_train_size():
    prompts = [f"prompt {i}" for i in range(300)]
    train, held = oasst1.split_prompts(prompts, 100, 50, seed=3)
    assert len(train) == 100 and len(held) == 50 and not set(train) & set(held)
    _, held2 = oasst1.split_prompts(prompts, 200, 50, seed=3)
    assert held == held2
    with pytest.raises(UserError):
        oasst1.split_prompts(prompts[:10], 5, 10, seed=0)


def test_oasst_wrong_format(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"chosen": "a", "rejected": "b"}])
    with pytest.raises(UserError, match="oasst1"):
        oasst1.load_prompts(str(path))


def test_embedded_demo_data_is_real_format_and_big_enough():
    pairs = hh_rlhf.load_pairs(str(DEMO_DATA_DIR / "hh_rlhf.jsonl"))
    assert len(pairs.pairs) >= 240 and pairs.num_skipped == 0
    multi = sum(1 for p in pairs.pairs if len(p.messages) > 1)
    assert multi >= 30
    chosen_longer = sum(len(p.chosen) > len(p.rejected) for p in pairs.pairs) / len(pairs.pairs)
    assert 0.4 < chosen_longer < 0.6, "length must not predict the label in the demo data"
    rows = [json.loads(line) for line in (DEMO_DATA_DIR / "oasst1.jsonl").read_text().splitlines()]
    assert {"message_id", "parent_id", "text", "role", "lang", "deleted", "message_tree_id"} <= set(rows[0])
    prompts = oasst1.load_prompts(str(DEMO_DATA_DIR / "oasst1.jsonl"), lang="en")
    assert len(prompts) >= 260
    assistant_texts = {r["text"] for r in rows if r["role"] == "assistant"}
    assert not assistant_texts & set(prompts)
