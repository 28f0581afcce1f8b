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


def test_train_val_split_is_disjoint_and_seeded(tmp_path):
    rows = [hh_row([f"question {i}?"], f"good {i}", f"bad {i}") for i in range(50)]
    path = str(write_jsonl(tmp_path / "pairs.jsonl", rows))
    train, val = hh_rlhf.train_val_pairs(path, train_size=30, val_size=10, seed=1)
    assert len(train.pairs) == 30 and len(val.pairs) == 10
    assert not {p.prompt for p in train.pairs} & {p.prompt for p in val.pairs}
    train2, val2 = hh_rlhf.train_val_pairs(path, train_size=30, val_size=10, seed=1)
    assert [p.prompt for p in val.pairs] == [p.prompt for p in val2.pairs]


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
