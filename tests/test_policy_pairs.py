"""Judge-side pairs never train a policy, whatever --judge-share is (issue 25, item 7): SFT and DPO take their pairs
from the judge's own split (its share, its test size) and leave out its train and dev pairs."""
import json

import pytest
from conftest import hh_row, write_jsonl

from rlhflab.config import DPOConfig, SFTConfig, build_config
from rlhflab.data.hh_rlhf import SPLIT_FILE, pair_id, policy_pairs, preference_split, prompt_side


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [hh_row([f"Question {i}: what is {i} plus {i}?"], f"It is {2 * i}.", f"Maybe {i}.") for i in range(120)]
    return str(write_jsonl(tmp_path_factory.mktemp("pairs") / "hh.jsonl", rows))


def _judge(tmp_path, data, share):
    split = preference_split(data, 4242, dev_size=4, test_size=10, judge_share=share)
    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / SPLIT_FILE).write_text(json.dumps(split.record("judge")))
    return folder, {pair_id(p) for p in split.judge_side}, {p.prompt for p in split.test.pairs}


@pytest.mark.parametrize("cls, module, builder", [(SFTConfig, "sft", "build_sft_trainer"),
                                                  (DPOConfig, "dpo", "build_dpo_trainer")])
@pytest.mark.parametrize("share", [0.8, 0.3])
def test_the_pairs_a_policy_trains_on_are_never_the_judges(tmp_path, data, monkeypatch, cls, module, builder, share):
    import importlib

    trainer_module = importlib.import_module(f"rlhflab.training.{module}")
    judge_dir, judge_ids, test_prompts = _judge(tmp_path, data, share)
    monkeypatch.setattr("rlhflab.config.JUDGE_DIR", judge_dir)
    seen = {}

    def capture(cfg, pairs, *args, **kw):  # stop where the trainer would start, with the pairs it would train on
        seen["pairs"] = pairs
        raise RuntimeError("captured")

    monkeypatch.setattr(trainer_module, builder, capture)
    cfg = build_config(cls, "demo", dataset=data, train_size=500, output_dir=str(tmp_path / module))
    assert cfg.judge_share is None, "by default the share is the judge's own"
    train = getattr(trainer_module, f"train_{module}")
    with pytest.raises(RuntimeError, match="captured"):
        train(cfg)
    ids = {pair_id(p) for p in seen["pairs"]}
    assert seen["pairs"] and not ids & judge_ids, "a judge-side pair would train the policy"
    assert not {p.prompt for p in seen["pairs"]} & test_prompts, "nor a shared test pair"
    assert all(prompt_side(p.prompt, share) == "policy" for p in seen["pairs"])
    if share > 0.6:  # what the old call (the default share 0.6) would have trained on: judge pairs among them
        old = {pair_id(p) for p in policy_pairs(data, 500, cfg.seed, test_size=10).pairs}
        assert old & judge_ids


def test_an_explicit_share_without_a_judge_split(tmp_path, data, monkeypatch):
    from rlhflab.data.hh_rlhf import policy_training_pairs

    pairs = policy_training_pairs(data, 500, 0, judge_share=0.9, judge_dir=tmp_path / "none").pairs
    assert pairs and all(prompt_side(p.prompt, 0.9) == "policy" for p in pairs)
    assert len(pairs) < len(policy_training_pairs(data, 500, 0, judge_dir=tmp_path / "none").pairs)
