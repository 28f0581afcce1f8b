"""The over-optimisation probe: the record's fields, the exact KL on the generated tokens, a missing judge (null
fields and one note, never a failure), reading the file back and dropping the steps a resume runs again."""
import contextlib
import json

import pytest
import torch

from rlhflab.measure.overopt import OVEROPT_FILE, OverOptProbe, holder, keep_up_to, read_overopt

FIELDS = {"step", "episode", "n_prompts", "kl_exact_per_token", "kl_exact_ci", "rm_score_mean", "rm_score_ci",
          "judge_score_mean", "judge_score_ci", "response_tokens_mean", "temperature", "judge_model", "reward_model"}
PROMPTS = ["Name a fruit.", "Tell me a fact about the sea.", "What is a cloud?"]


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tiny_reward_dir):
    from rlhflab.models.loading import load_causal_lm, load_reward_model

    policy, tok = load_causal_lm(str(tiny_llama_dir))
    moved, _ = load_causal_lm(str(tiny_llama_dir))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reward, reward_tok = load_reward_model(str(tiny_reward_dir))
    return policy, moved, tok, reward, reward_tok


def _probe(tmp_path, models, judge, **kw):
    policy, moved, tok, reward, reward_tok = models
    return OverOptProbe(PROMPTS, tok, reward, reward_tok, tmp_path / OVEROPT_FILE, temperature=0.7, max_new_tokens=6,
                        reward_model_name="rm", judge_model=judge, use_policy=holder(moved),
                        use_reference=holder(policy), **kw)


def test_probe_record_with_a_missing_judge(tmp_path, models, capsys):
    probe = _probe(tmp_path, models, str(tmp_path / "no-judge-here"))
    out = capsys.readouterr().out
    assert out.count("note: no judge model") == 1 and "judge fields null" in out
    first = probe.run(0, 0)
    second = probe.run(4, 32)
    assert capsys.readouterr().out.count("note:") == 0  # the note is printed once, not at every probe
    assert FIELDS <= set(first) and first["n_prompts"] == 3 and first["temperature"] == 0.7
    assert first["judge_score_mean"] is None and first["judge_score_ci"] is None and first["judge_model"] is None
    lo, hi = first["kl_exact_ci"]
    assert first["kl_exact_per_token"] > 0 and lo <= first["kl_exact_per_token"] <= hi
    lo, hi = first["rm_score_ci"]
    assert lo <= first["rm_score_mean"] <= hi
    # a fixed seed: the same policy gives the same answers at every probe
    assert second["rm_score_mean"] == first["rm_score_mean"]
    assert second["kl_exact_per_token"] == pytest.approx(first["kl_exact_per_token"])
    assert [r["step"] for r in read_overopt(tmp_path)] == [0, 4]


def test_probe_kl_is_the_evaluation_kl_of_its_own_samples(tmp_path, models, tiny_reward_dir):
    from rlhflab.generation.sampling import generate_batch
    from rlhflab.measure.kl import exact_kl_of_responses
    from rlhflab.measure.scoring import score_responses

    policy, moved, tok, reward, reward_tok = models
    probe = _probe(tmp_path, models, str(tiny_reward_dir))
    record = probe.run(2, 16)
    # the judge is loaded (here the reward model itself, so both scores agree)
    assert record["judge_model"] == str(tiny_reward_dir)
    assert record["judge_score_mean"] == pytest.approx(record["rm_score_mean"], abs=1e-5)
    # the same samples again (the probe's fixed seed), measured independently
    torch.manual_seed(123)  # the probe must not depend on, nor reset, the caller's RNG
    state = torch.random.get_rng_state()
    gens = generate_batch(moved, tok, PROMPTS, probe.settings())
    assert not torch.equal(state, torch.random.get_rng_state())
    ids = [g.token_ids for g in gens]
    sums, counts = exact_kl_of_responses(lambda: contextlib.nullcontext(moved), lambda: contextlib.nullcontext(policy),
                                         tok, PROMPTS, ids, temperature=0.7)
    assert record["kl_exact_per_token"] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    assert record["response_tokens_mean"] == pytest.approx(sum(counts) / 3)
    scores = score_responses(reward, reward_tok, PROMPTS, [g.text for g in gens])
    assert record["rm_score_mean"] == pytest.approx(sum(scores) / 3, abs=1e-5)
    before = torch.random.get_rng_state()
    probe.run(3, 24)
    assert torch.equal(before, torch.random.get_rng_state())  # training's RNG stream is left where it was


def test_same_policy_and_reference_give_zero_kl(tmp_path, models):
    policy, _, tok, reward, reward_tok = models
    probe = OverOptProbe(PROMPTS[:2], tok, reward, reward_tok, tmp_path / OVEROPT_FILE, temperature=0.7,
                         max_new_tokens=4, reward_model_name="rm", judge_model=None, use_policy=holder(policy),
                         use_reference=holder(policy))
    assert abs(probe.run(0, 0)["kl_exact_per_token"]) < 1e-6


def test_read_back_and_resume_drops_later_probes(tmp_path):
    path = tmp_path / OVEROPT_FILE
    assert read_overopt(tmp_path) == []
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 4, 8)) + '{"step": 12, "kl')  # cut mid-write
    assert [r["step"] for r in read_overopt(tmp_path)] == [0, 4, 8]
    keep_up_to(path, 5)
    assert [r["step"] for r in read_overopt(tmp_path)] == [0, 4]
    keep_up_to(tmp_path / "absent.jsonl", 3)  # nothing to trim: no error, no file
    assert not (tmp_path / "absent.jsonl").exists()


def test_probe_reports_the_change_against_step_0_paired_by_prompt(tmp_path, models):
    import numpy as np

    from rlhflab.measure.overopt import MDE_Z

    policy, moved, tok, reward, reward_tok = models
    probe = _probe(tmp_path, models, str(tmp_path / "no-judge"))
    first = probe.run(0, 0, use_policy=holder(policy))  # the start: the reference itself
    assert first["rm_change_vs_step0"] is None and first["rm_mde"] is None and len(first["rm_scores"]) == 3
    assert len(first["responses"]) == 3 and 0 <= first["cut_rate"] <= 1
    later = probe.run(4, 32)  # the moved policy
    diff = np.array(later["rm_scores"]) - np.array(first["rm_scores"])
    change = later["rm_change_vs_step0"]
    assert change[0] == pytest.approx(diff.mean(), abs=1e-6) and change[1] <= change[0] <= change[2]
    assert later["rm_mde"] == pytest.approx(MDE_Z * diff.std(ddof=1) / np.sqrt(3), rel=1e-6)
    assert later["judge_change_vs_step0"] is None, "no judge: no judge change"
    # a resumed run (a new probe) pairs against the step-0 probe in the log
    resumed = _probe(tmp_path, models, str(tmp_path / "no-judge")).run(8, 64)
    assert resumed["rm_change_vs_step0"][0] == pytest.approx(diff.mean(), abs=1e-6)

    from rlhflab.measure.plots import overoptimisation_figure

    fig = json.loads(overoptimisation_figure({"ppo-full": read_overopt(tmp_path)}).to_json())
    rm = next(t for t in fig["data"] if t["name"] == "ppo-full training RM")
    assert rm["y"][0] == 0 and rm["y"][1] == pytest.approx(diff.mean(), abs=1e-6)
    assert rm["text"][1].startswith("MDE ") and "change" in fig["layout"]["yaxis"]["title"]["text"]


def test_the_probe_refuses_the_training_reward_model_as_its_judge(tmp_path, models, tiny_reward_dir):
    from rlhflab.errors import UserError

    policy, moved, tok, reward, reward_tok = models
    with pytest.raises(UserError, match="is the training reward model"):
        OverOptProbe(PROMPTS, tok, reward, reward_tok, tmp_path / OVEROPT_FILE, temperature=0.7, max_new_tokens=6,
                     reward_model_name=str(tiny_reward_dir), judge_model=str(tiny_reward_dir),
                     use_policy=holder(moved), use_reference=holder(policy))
