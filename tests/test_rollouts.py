"""Every RL step's rollouts (issue 25, item 5): the store (rlhflab.store.rollouts), the per-sequence exact KL that
kl_sums hands it, a tiny PPO run's rollouts.jsonl checked against its own metrics log, and the curves tab's table."""
import json

import pytest
import torch

from rlhflab.store.rollouts import (ROLLOUTS_FILE, append_rollouts, keep_up_to, read_rollouts, rollout_steps,
                                    rollouts_at, step_records)


def _rows(step, scores):
    return [{"prompt": f"p{i}", "response": f"r{i}", "score": s, "kl_exact": 0.1 * i, "tokens": 3 + i, "cut": i % 2 == 0}
            for i, s in enumerate(scores)]


def test_steps_are_kept_and_a_rerun_step_replaces_its_earlier_write(tmp_path):
    append_rollouts(tmp_path, 1, _rows(1, [0.5, 0.1]))
    append_rollouts(tmp_path, 2, _rows(2, [0.2, 0.9, -0.3]))
    append_rollouts(tmp_path, 2, _rows(2, [1.0]))  # a resumed run ran step 2 again: only its latest write counts
    assert rollout_steps(tmp_path) == [1, 2]
    assert [r["score"] for r in read_rollouts(tmp_path) if r["step"] == 2] == [1.0]
    assert [r["score"] for r in rollouts_at(tmp_path, 1)] == [0.5, 0.1]
    assert [r["score"] for r in rollouts_at(tmp_path, 1, "score", descending=False)] == [0.1, 0.5]
    assert [r["index"] for r in rollouts_at(tmp_path, 1, "kl_exact")] == [1, 0]
    with (tmp_path / ROLLOUTS_FILE).open("a") as f:
        f.write('{"step": 3, "prompt": "cut mid-wri')  # a kill mid-write: the lines before it still hold
    assert rollout_steps(tmp_path) == [1, 2]
    keep_up_to(tmp_path, 1)
    assert rollout_steps(tmp_path) == [1]
    with pytest.raises(ValueError):
        rollouts_at(tmp_path, 1, "nonsense")


class _Tok:
    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids if not (skip_special_tokens and i == 2))


def test_step_records_pair_scores_with_the_measured_sequences():
    record = {"rollout_scores": [0.3, -0.2], "rollout_prompts": [11, 22]}
    rows = [([5, 6, 2], 0.12), ([7, 8, 9, 9], 0.4)]
    out = step_records(record, rows, _Tok(), {11: "first", 22: "second"}, {2}, max_new_tokens=4)
    assert out[0] == {"prompt": "first", "score": 0.3, "response": "t5 t6", "kl_exact": 0.12, "tokens": 3, "cut": False}
    assert out[1]["cut"] is True and out[1]["tokens"] == 4 and out[1]["response"] == "t7 t8 t9 t9"
    # a step whose KL was not measured: scores and prompts only, never a text paired with the wrong score
    missing = step_records(record, rows[:1], _Tok(), {11: "first"}, {2})
    assert [m["response"] for m in missing] == [None, None] and missing[1]["prompt"] is None


def test_kl_sums_hands_each_sequence_its_own_exact_kl():
    from rlhflab.measure.kl import exact_kl_sum, kl_sums

    torch.manual_seed(0)
    p, q = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    tokens = torch.randint(0, 11, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    rows = []
    total = kl_sums(p, q, tokens, mask, rows=rows)
    assert kl_sums(p, q, tokens, mask).tolist() == total.tolist()  # without `rows` nothing is kept anywhere
    assert [ids for ids, _ in rows] == [tokens[i, :int(mask[i].sum())].tolist() for i in range(3)]
    for i, (_, kl) in enumerate(rows):
        alone, _ = exact_kl_sum(p[i], q[i], mask[i])
        assert kl == pytest.approx(float(alone), rel=1e-5)
    assert sum(kl for _, kl in rows) == pytest.approx(float(total[0]), rel=1e-5)


def test_a_ppo_run_keeps_every_steps_rollouts(full_run):
    from rlhflab.store.jsonio import read_jsonl

    metrics = read_jsonl(full_run / "metrics.jsonl")
    rows = read_rollouts(full_run)
    assert rollout_steps(full_run) == [r["step"] for r in metrics]
    train = {json.loads(line)["prompt"] for line in (full_run / "train_prompts.jsonl").read_text().splitlines()}
    for m in metrics:
        step = [r for r in rows if r["step"] == m["step"]]
        assert [r["score"] for r in step] == m["rollout_scores"], "the scores the trainer logged, in order"
        assert all(r["prompt"] in train and isinstance(r["response"], str) for r in step)
        # the per-sequence exact KL adds up to the step's logged exact KL per token
        assert sum(r["kl_exact"] for r in step) / sum(r["tokens"] for r in step) == pytest.approx(
            m["kl_exact_per_token"], rel=1e-3, abs=1e-7)
        assert sum(r["tokens"] for r in step) / len(step) == pytest.approx(m["response_tokens_mean"], rel=1e-6)
        assert all(isinstance(r["cut"], bool) for r in step)
    assert all(abs(r["kl_exact"]) < 1e-5 for r in rows if r["step"] == 1), "step 1: policy == reference"


def test_the_curves_tab_table_sorts_and_marks_missing_values():
    from space.curves import ROLLOUT_COLUMNS, rollout_table

    rows = [{"index": 0, "prompt": "a", "response": "x", "score": 0.1, "kl_exact": None, "tokens": 4, "cut": True},
            {"index": 1, "prompt": "b", "response": "y", "score": 0.9, "kl_exact": 0.3, "tokens": 9, "cut": False}]
    table = rollout_table(rows, "score")
    assert list(table.columns) == ROLLOUT_COLUMNS and table["prompt"].tolist() == ["b", "a"]
    assert rollout_table(rows, "score-asc")["prompt"].tolist() == ["a", "b"]
    by_kl = rollout_table(rows, "kl_exact")
    assert by_kl["prompt"].tolist() == ["b", "a"] and by_kl["exact KL (nats/sequence)"].tolist() == ["0.3000", "—"]
    assert rollout_table(rows, "index")["cut"].tolist() == ["cut", "ended"]


def test_report_to_sends_the_step_as_a_table(tmp_path, monkeypatch):
    import sys
    import types

    from rlhflab.store.rollouts import TABLE_COLUMNS, report_rollouts

    logged = []

    class Table:
        def __init__(self, columns=None, data=None, dataframe=None):
            self.columns, self.data = (list(dataframe.columns), dataframe.values.tolist()) if dataframe is not None \
                else (columns, data)

    fake_wandb = types.SimpleNamespace(run=object(), Table=Table, log=lambda d, **kw: logged.append(("wandb", d, kw)))
    fake_trackio = types.SimpleNamespace(Table=Table, log=lambda d, **kw: logged.append(("trackio", d, kw)))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setitem(sys.modules, "trackio", fake_trackio)
    rows = _rows(3, [0.5, -0.2])
    assert report_rollouts("wandb", tmp_path, 3, rows) == "wandb table"
    assert report_rollouts("trackio", tmp_path, 3, rows) == "trackio table"
    for tracker, data, _ in logged:
        table = data["rollouts"]
        assert table.columns == TABLE_COLUMNS and [r[0] for r in table.data] == [3, 3]
        assert [r[3] for r in table.data] == [0.5, -0.2] and table.data[0][1] == "p0"
    assert report_rollouts("none", tmp_path, 3, rows) is None and report_rollouts("wandb", tmp_path, 3, []) is None
    fake_wandb.run = None  # no open run: nothing sent, nothing raised
    assert report_rollouts("wandb", tmp_path, 3, rows) is None
